"""Corrupt's sigma on the built-in world: C^3 captioners over sigma x 3 seeds, trained as
one program on the main job's world and Connect, with the sigma that the learned space's
alignment noise calibrates marked on the plot (sigma_sweep.png). Does the best sigma sit
where the calibrated alignment noise says (the paper's Section 3.3)?

Variants: '' (the sweep), 'quick' (a tiny end-to-end check for tests).
"""
from configs import parse_arg
from configs import shapes_caption

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    parts = parse_arg(arg, VARIANTS, "shapes_sigma_sweep")
    c = shapes_caption.get_config("quick" if "quick" in parts else "")
    c.experiment = "shapes_sigma_sweep"
    c.variants = "c3"
    c.sigmas = "0,0.01,0.02,0.05,0.1,0.1265,0.2,0.3"  # 0.1265 = sqrt(0.016), the paper's
    c.seeds = 3
    if "quick" in parts:
        c.sigmas, c.seeds = "0,0.1", 2
    return c
