"""Appendix G / Table 6: a captioner trained on CLIP text embeddings (C1), evaluated on
test text embeddings shifted by a constant c orthogonal to their span, for each |c|
(ROUGE-1, ROUGE-L, METEOR against the caption each embedding came from)."""
from c3_jax.train.captioning import base_config


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"unknown variant {arg!r}: caption_gap_sensitivity has no variants")
    return base_config("caption_gap_sensitivity")
