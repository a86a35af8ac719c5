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


def items(value) -> list:
    """The elements of a tuple field (or a comma-separated string), an element that is a
    string split at its commas: ``--config.<field>=c1,c3`` gives ``('c1,c3',)``, and
    ``('c1', 'c3')`` either way."""
    parts = (value,) if isinstance(value, str) else tuple(value)
    return [v for p in parts
            for v in ([s.strip() for s in p.split(",") if s.strip()] if isinstance(p, str)
                      else [p])]


def names(value, field: str) -> List[str]:
    """The names of a tuple field (``items``): ``('c1', 'c3')``."""
    out = items(value)
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"config field {field!r} is {value!r}; it must be a tuple of names")
    return out


def floats(value, field: str) -> List[float]:
    """The numbers of a tuple field (``items``): ``(0.05, 0.2)``."""
    try:
        return [float(v) for v in items(value)]
    except (TypeError, ValueError):
        raise ValueError(f"config field {field!r} is {value!r}; it must be a tuple of "
                         "numbers") from None
