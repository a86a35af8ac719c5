"""Config files: ``get_config(arg)`` of each returns an ml_collections ConfigDict, where
``arg`` is the ':variant' part of --config=configs/X.py:variant. The defaults of every
experiment live here and nowhere else. A composite experiment nests the configs of its
parts (``c.world``, ``c.connect``, ``c.captioner``, ...) and hands each part its own."""
from typing import Iterable, List


def field_types(config) -> dict:
    """{field: type} of a config's defaults (all but 'experiment'), nested configs as nested
    dicts: what a run of that experiment must be given."""
    return {k: field_types(v) if hasattr(v, "items") else type(v)
            for k, v in config.items() if k != "experiment"}


def parse_arg(arg: str, known: Iterable[str], config_name: str) -> List[str]:
    """The comma-separated variants of ``arg``, each checked against ``known``."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = [p for p in parts if p not in set(known)]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r} of {config_name}; known variants: "
                         f"{sorted(known) or 'none'}")
    return parts
