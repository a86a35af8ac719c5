"""The main job: Connect -> Collapse -> Corrupt on the built-in shapes world, on CPU, with
no downloads. Trains a small CLIP on image-caption pairs (Connect), reports the geometry of
the learned space, trains captioners on caption text embeddings only for each C^3 variant
and seed, and captions test images (COCO metrics + attribute accuracy).

Connect's recipe (depth 3, temperature fixed at 0.01, 600 steps, 5 % of the world's
captions terse) was chosen by the geometry of its val pairs alone, in the Connect study
(configs/shapes_connect_study.py): it is the cheapest recipe measured that has CLIP's
Table 1 geometry (gap 0.62 >= 0.6, direction cosine 0.99, the official notebook's
orthogonality std 0.37 times a random direction's, <= CLIP's 1.36) and retrieves at
least 80 % of the landed learned-temperature recipe's image->text R@1 (0.606): 0.49 on
the val pairs' own captions, 0.51 on the same images' complete captions. Depth 2 keeps the
gap (0.65) but retrieves 0.48 on its own captions; depth 4 meets too, at 1.3x depth 3's
training time. With complete captions only the gap is 0.45; with the learned temperature
0.08.

Variants: '' (the main job), 'quick' (a tiny end-to-end check for tests, under a minute).
Each part has its own nested config, set from the command line by its path:
--config.world.train_size=..., --config.connect.steps=..., --config.captioner.lr=...
"""
from c3_jax.experiments.schema import parse_arg
from c3_jax.world import caption

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_caption")
    return caption.default_config(quick)
