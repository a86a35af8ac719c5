"""Value checks that experiments run on their config before any work (``check(config)``):
each failure names the field and what it must be."""
from __future__ import annotations

import os
import shutil
from typing import Iterable


def at_least(config, minimum, names: Iterable[str]) -> None:
    for name in names:
        if config[name] < minimum:
            raise ValueError(f"config field {name!r} is {config[name]}; it must be >= {minimum}")


def positive(config, names: Iterable[str]) -> None:
    for name in names:
        if not config[name] > 0:
            raise ValueError(f"config field {name!r} is {config[name]}; it must be > 0")


def within(config, low, high, names: Iterable[str]) -> None:
    for name in names:
        if not low <= config[name] <= high:
            raise ValueError(f"config field {name!r} is {config[name]}; it must lie in "
                             f"[{low}, {high}]")


def divides(config, divisor: str, dividend: str) -> None:
    if config[divisor] <= 0 or config[dividend] % config[divisor]:
        raise ValueError(f"config field {dividend!r}={config[dividend]} must be a multiple of "
                         f"{divisor!r}={config[divisor]}")


def existing(path: str, field: str) -> None:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"config field {field!r}: {path!r} does not exist")


def java() -> None:
    """The caption metrics (METEOR, tokenization) run on Java."""
    if shutil.which("java") is None:
        raise FileNotFoundError("the caption metrics need a Java runtime and none is on PATH; "
                                "install one (e.g. the 'default-jre' package)")
