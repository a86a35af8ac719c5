"""C^3 text-to-image on MS-COCO (Table 3): LAFITE's StyleGAN2 trained on CLIP image
embeddings only, evaluated from caption text embeddings with FID / IS.

Variants: '' or 'c3' (Collapse + Corrupt), 'c1', 'c2_collapse', 'c2_corrupt', 'lafite'
(LAFITE's own perturbation: the mix with level 0.75 after Collapse), 'quick'.
"""
from c3_jax.train.generation import base_config

VARIANTS = ("c1", "c2_collapse", "c2_corrupt", "c3", "lafite")


def get_config(arg: str = ""):
    c = base_config()
    name = arg or "c3"
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of coco_t2i; use one of {VARIANTS}")
    c.variant = name
    if name == "lafite":
        c.noise_sigma = 0.75  # the mix level of LAFITE's perturbation
    return c
