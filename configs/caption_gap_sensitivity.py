"""Appendix G / Table 6: a captioner trained on CLIP text embeddings (C1), evaluated on
test text embeddings shifted by a constant c orthogonal to their span, for each |c|
(ROUGE-1, ROUGE-L, METEOR against the caption each embedding came from)."""
from c3_jax.experiments import caption
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "caption_gap_sensitivity")
    return caption.default_config("caption_gap_sensitivity")
