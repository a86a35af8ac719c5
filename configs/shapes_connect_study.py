"""The Connect study: the built-in world's CLIP trained under a grid of recipes, with the
geometry of its space (gap, Table 1 statistics, calibrated sigma, effective dimensions,
image->text R@1) measured on val pairs at initialization and along training. Each axis is
varied alone around the base recipe (depth 2, with the main job's other settings); training
length is read along every recipe's trajectory. The cheapest recipe that meets every target
(results.json -> cheapest_meeting) is the main job's Connect. The targets
(connect_study.CLIP_TARGETS): gap length >= 0.6, direction cosine >= 0.95, the official
notebook's orthogonality std over that of random directions <= 1.36 (CLIP's on MS-COCO),
and 80 % of the landed recipe's R@1. Writes gap_vs_depth.png, gap_vs_temperature.png,
gap_vs_training.png, gap_vs_captions.png and results.json.

Variants: '' (the study), 'quick' (a tiny end-to-end check for tests).
"""
from c3_jax.experiments.schema import parse_arg
from c3_jax.world import connect_study

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_connect_study")
    return connect_study.default_config(quick)
