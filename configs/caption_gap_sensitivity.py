"""Appendix G / Table 6: a captioner trained on CLIP text embeddings (C1), evaluated on
test text embeddings shifted by a constant c orthogonal to their span, for each |c|
(ROUGE-1, ROUGE-L, METEOR against the caption each embedding came from)."""
from configs import caption_base, parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "caption_gap_sensitivity")
    return caption_base.get_config("caption_gap_sensitivity")
