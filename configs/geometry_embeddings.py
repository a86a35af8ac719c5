"""Appendix C on any paired embeddings: effective dims, Table 1 statistics, calibrated sigma.

Give the pairs as --config.embeddings=FILE.npz (arrays under x_key and y_key, row i of
each is a pair) or as --config.embeddings=X.npy,Y.npy.
"""
import ml_collections

from configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parse_arg(arg, (), "geometry_embeddings")
    c = ml_collections.ConfigDict()
    c.experiment = "geometry_embeddings"
    c.embeddings = ""
    c.x_key = "x"          # e.g. image / audio / video embeddings
    c.y_key = "y"          # e.g. caption embeddings
    c.seed = 0
    c.group_size = 100     # pairs per group (Appendix C)
    c.gamma = 0.99
    c.calibration_pairs = 100
    return c
