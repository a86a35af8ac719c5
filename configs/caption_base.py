"""The paper's COCO captioning setup as the library defines it
(c3_jax.experiments.caption.default_config): every field of the captioning experiments with
its default, for scripts that start from it (benchmarks/)."""
from c3_jax.experiments import caption


def get_config(arg: str = "caption"):
    """The library's defaults of captioning experiment ``arg`` ('caption', 'caption_sweep'
    or 'caption_gap_sensitivity')."""
    return caption.default_config(arg or "caption")
