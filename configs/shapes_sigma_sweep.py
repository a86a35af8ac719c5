"""Corrupt's sigma on the built-in world: C^3 captioners over sigma x 3 seeds, trained as
one program on the main job's world and Connect, with the sigma that the learned space's
alignment noise calibrates marked on the plot (sigma_sweep.png). Does the best sigma sit
where the calibrated alignment noise says (the paper's Section 3.3)?

Variants: '' (the sweep), 'quick' (a tiny end-to-end check for tests).
"""
from c3_jax.experiments.schema import parse_arg
from c3_jax.world import sigma_sweep

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_sigma_sweep")
    return sigma_sweep.default_config(quick)
