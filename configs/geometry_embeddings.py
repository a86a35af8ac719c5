"""Appendix C on any paired embeddings: effective dims, Table 1 statistics, calibrated sigma.

Give the pairs as --config.embeddings=FILE.npz (arrays under x_key and y_key, row i of
each is a pair) or as --config.embeddings=X.npy,Y.npy.
"""
from c3_jax.experiments import geometry_runs
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "geometry_embeddings")
    return geometry_runs.default_config("geometry_embeddings")
