"""C^3 text-to-image on MS-COCO (Table 3): LAFITE's StyleGAN2 trained on CLIP image
embeddings only, evaluated from caption text embeddings with FID / IS computed as LAFITE's
protocol (fid_protocol "lafite": 30,000 images from the first 30,000 rows of test_split,
LAFITE's val2014, one random caption each, against every training image; results.json's
metrics.fid_protocol says what was generated). Training follows LAFITE and the C^3 scripts
(c3_jax.experiments.t2i.default_config); --config.generator.init_from=pre-trained-google-cc-best-fid.pkl
starts from LAFITE's released networks, as C^3's Table 3 does.

Variants: '' or 'c3' (Collapse + Corrupt), 'c1', 'c2_collapse', 'c2_corrupt', 'lafite'
(the Table 3 baseline as the official C^3 script runs it: LAFITE's perturbation
n(0.25 n(e) + 0.75 u/|u|), no Collapse), and this project's own variants (c3.member_settings):
'c3_aniso' (Corrupt with the residual covariance of 500 image-caption pairs, shrunk, at their
calibrated sigma), 'c3_standardize' (Collapse, every dimension scaled to a common std).
"""
from c3_jax.experiments import t2i
from c3_jax.experiments.schema import parse_arg

VARIANTS = ("c1", "c2_collapse", "c2_corrupt", "c3", "lafite", "c3_aniso", "c3_standardize")


def get_config(arg: str = ""):
    c = t2i.default_config()
    parts = parse_arg(arg, VARIANTS, "coco_t2i")
    if len(parts) > 1:
        raise ValueError(f"coco_t2i takes one variant, got {parts}")
    name = parts[0] if parts else "c3"
    c.method.variant = name
    if name == "lafite":
        c.method.noise_sigma = 0.75  # the mix level of LAFITE's perturbation
    c.method.sigma_from_calibration = name == "c3_aniso"
    return c
