"""Table 2 of the paper as one program: the C^3 ablations (c1, c2_collapse, c2_corrupt,
c3) x 3 seeds on MS-COCO, GPT-2 prefix captioners trained together on CLIP text
embeddings only (``caption_sweep``: one compiled step, members split over the devices),
each evaluated on CLIP image embeddings; scores per member and mean ± std per variant.

Variants (comma-separated):
  supervised   add the upper bound (c1 trained on image embeddings)
  sigma        c2_corrupt and c3 over sigma in {0.05, sqrt(0.016), 0.2} instead of the paper's one
"""
from c3_jax.experiments import caption
from c3_jax.experiments.schema import parse_arg

VARIANTS = ("supervised", "sigma")


def get_config(arg: str = ""):
    c = caption.default_config("caption_sweep")
    parts = parse_arg(arg, VARIANTS, "coco_caption_sweep")
    if "supervised" in parts:
        c.sweep.variants += ("supervised",)
    if "sigma" in parts:
        c.sweep.sigmas = (0.05, 0.1265, 0.2)
    return c
