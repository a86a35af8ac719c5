"""The paper's COCO text-to-image setup as the library defines it
(c3_jax.experiments.t2i.default_config): every field of the 'generate' experiment with its
default, for scripts that start from it (benchmarks/)."""
from c3_jax.experiments import t2i
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "t2i_base")
    return t2i.default_config()
