"""Section 3.1 / Figure 4: synthetic contrastive optimization.

Variants: ':quick' runs 20K steps; ':notebook' runs the reference notebook's protocol
(geometry_analysis/contrastive_optimization.ipynb): raw rows, normalized inside the loss,
100K steps.
"""
from c3_jax.experiments import geometry_runs
from c3_jax.experiments.schema import parse_arg

VARIANTS = ("quick", "notebook")


def get_config(arg: str = ""):
    parts = parse_arg(arg, VARIANTS, "geometry_synthetic")
    c = geometry_runs.default_config("geometry_synthetic")
    if "quick" in parts:
        c.steps = 20_000
    if "notebook" in parts:
        c.protocol = "notebook"
        c.steps = 100_000 if "quick" not in parts else c.steps
    return c
