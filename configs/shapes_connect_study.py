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
import ml_collections

from configs import parse_arg, shapes_caption

VARIANTS = ("quick",)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_connect_study")
    main = shapes_caption.get_config("quick" if quick else "")
    c = ml_collections.ConfigDict()
    c.experiment = "shapes_connect_study"
    c.seed = main.seed
    # The main job's world (its connect and val splits: the study trains and measures on
    # those) and Connect; the base recipe is depth 2 (the depth axis's centre) with the main
    # job's temperature and captions. The main job's depth is the study's answer: depth 3,
    # the cheapest recipe that meets every target.
    c.world = ml_collections.ConfigDict({k: main.world[k] for k in (
        "image_size", "two_object_fraction", "connect_size", "val_size")})
    c.connect = main.connect
    if not quick:
        c.connect.depth = 2
    c.base_caption_omit = main.world.caption_omit
    # Axes. Temperature 'learned' starts at CLIP's 0.07 (logit scale capped at 100).
    c.depths = "1,2,3,4,8"
    c.temperatures = "0.01,0.07,0.2,learned"
    c.caption_omits = "0,0.5,1"  # share of captions that leave out size/position or colours
    c.probe_steps = "0,25,50,100,200,300,400,600"
    c.group_size = 100  # Table 1's groups of pairs
    if quick:
        c.depths, c.temperatures, c.caption_omits = "1", "0.01", "0"  # omit 0: the landed world
        c.probe_steps = "0,10"
        c.group_size = 10
    return c
