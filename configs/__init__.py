"""Config files: ``get_config(arg)`` of each returns an ml_collections ConfigDict, where
``arg`` is the ':variant' part of --config=configs/X.py:variant. Each starts from the
defaults its experiment's module owns (``default_config`` in c3_jax/experiments/ or
c3_jax/world/) and changes what differs, so a file loads from any path. This __init__ only
lets the tests import them as ``configs.X`` from the repository root; nothing installs it."""
