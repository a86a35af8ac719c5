"""Appendix I.2 / Figure 13: dimensional collapse of randomly initialized ReLU MLPs."""
from c3_jax.experiments import geometry_runs
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "geometry_mlp_collapse")
    return geometry_runs.default_config("geometry_mlp_collapse")
