"""Config schemas: every experiment module owns ``default_config`` (each of its fields with
its default) and validates a run's config against ``field_types`` of it; config files start
from those defaults and read their ':variant' argument with ``parse_arg``."""
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
