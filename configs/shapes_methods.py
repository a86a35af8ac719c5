"""The gap-closing methods side by side on the built-in world: the main job's world,
Connect and captioners (configs/shapes_caption.py), with every method of c3.METHODS beside
the paper's variants, x the main job's 5 seeds, trained and decoded as one sweep.

Methods (c3.member_settings): this project's own c3_aniso (Corrupt with the residual
covariance of calibration pairs, at their calibrated sigma) and c3_standardize (Collapse,
every dimension scaled to a common std); realign (ReAlign: Anchor, Trace and Centroid, the
text moved onto the image mean and covariance trace), capdec_offset (CapDec with its modality
offset), decap (trained as c1, image embeddings projected onto the memory of training text
embeddings at inference).

Variants: '' (the comparison), 'quick' (a tiny end-to-end check for tests).
"""
from c3_jax.experiments.schema import parse_arg
from c3_jax.world import caption

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    parts = parse_arg(arg, VARIANTS, "shapes_methods")
    c = caption.default_config("quick" in parts)
    c.sweep.variants = ("c1", "c2_collapse", "c2_corrupt", "c3", "c3_calibrated", "supervised",
                        "c3_aniso", "c3_standardize", "realign", "capdec_offset", "decap")
    return c
