"""The built-in synthetic world: scenes with ground-truth attributes, its Connect (a small
CLIP trained here), the attribute probe, and its experiments. It stands on the C^3 library
(c3_jax.data, models, train, eval, experiments) and nothing in the library imports it; the
experiment registry names its run functions by string."""
