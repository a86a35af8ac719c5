"""Section 3.1 / Figure 4: synthetic contrastive optimization.

Variants: ':quick' runs 20K steps; ':notebook' runs the reference notebook's protocol
(geometry_analysis/contrastive_optimization.ipynb): raw rows, normalized inside the loss,
100K steps.
"""
import ml_collections

from configs import parse_arg

VARIANTS = ("quick", "notebook")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parts = parse_arg(arg, VARIANTS, "geometry_synthetic")
    c = ml_collections.ConfigDict()
    c.experiment = "geometry_synthetic"
    c.seed = 0
    c.num_pairs = 500      # 500 image + 500 text embeddings, as the reference code does
    c.dim = 512
    c.d_x = 25             # effective dims of CLIP image embeddings at init (Figure 3)
    c.d_y = 230            # effective dims of CLIP text embeddings at init
    c.tau = 0.07           # CLIP's initial temperature, fixed (logit scale log(1/0.07))
    c.lr = 0.1
    c.steps = 200_000
    c.chunk = 1_000        # steps per jitted lax.scan call
    c.gamma = 0.99
    c.stable_delta = 0.01  # Lemma 2: loss level regarded as converged
    # 'normalize_once': Lemma 1's loss on the embeddings, unit-normalized once before
    # optimization (Section 3.1). 'normalize_in_loss': normalize inside the loss, like a
    # CLIP head, from unit rows. 'notebook': normalize inside the loss, from raw rows.
    c.protocol = "normalize_once"
    if "quick" in parts:
        c.steps = 20_000
    if "notebook" in parts:
        c.protocol = "notebook"
        c.steps = 100_000 if "quick" not in parts else c.steps
    return c
