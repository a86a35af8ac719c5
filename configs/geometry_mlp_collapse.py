"""Appendix I.2 / Figure 13: dimensional collapse of randomly initialized ReLU MLPs."""
import ml_collections

from configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parse_arg(arg, (), "geometry_mlp_collapse")
    c = ml_collections.ConfigDict()
    c.experiment = "geometry_mlp_collapse"
    c.seed = 0
    c.num_inputs = 10_000   # as the reference notebook (Figure 13)
    c.width = 512
    c.depth = 50
    c.every = 5
    return c
