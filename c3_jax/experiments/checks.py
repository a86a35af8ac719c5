"""Value checks that experiments run on their config before any work (``check(config)``):
each failure names the field and what it must be. A field of a nested config is named by
its path, e.g. 'connect.steps' (the --config.connect.steps flag)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable


def value(config, name: str):
    """The value of field ``name`` ('a.b' is field b of the nested config a)."""
    for part in name.split("."):
        config = config[part]
    return config


def at_least(config, minimum, names: Iterable[str]) -> None:
    for name in names:
        if value(config, name) < minimum:
            raise ValueError(f"config field {name!r} is {value(config, name)}; it must be >= "
                             f"{minimum}")


def positive(config, names: Iterable[str]) -> None:
    for name in names:
        if not value(config, name) > 0:
            raise ValueError(f"config field {name!r} is {value(config, name)}; it must be > 0")


def within(config, low, high, names: Iterable[str]) -> None:
    for name in names:
        if not low <= value(config, name) <= high:
            raise ValueError(f"config field {name!r} is {value(config, name)}; it must lie in "
                             f"[{low}, {high}]")


def one_of(config, name: str, allowed: Iterable[str]) -> None:
    if value(config, name) not in tuple(allowed):
        raise ValueError(f"config field {name!r} is {value(config, name)!r}; it must be one "
                         f"of {tuple(allowed)}")


def unset(config, names: Iterable[str], why: str) -> None:
    """Each of ``names`` is '' (a field the experiment fills itself, or does not use)."""
    for name in names:
        if value(config, name):
            raise ValueError(f"config field {name!r} is {value(config, name)!r}; {why} "
                             "(leave it '')")


def unread_by_sweeps(config, method_defaults) -> None:
    """A sweep names its members' variants and sigmas in ``sweep``: ``method.variant`` and
    ``method.sigma_from_calibration`` (a single run's) stay at their defaults (those of
    ``method_defaults``, the task's default ``method`` sub-config)."""
    for field in ("variant", "sigma_from_calibration"):
        name, default = f"method.{field}", method_defaults[field]
        if value(config, name) != default:
            raise ValueError(f"config field {name!r} is {value(config, name)!r}; a sweep does "
                             "not read it: its members' variants are 'sweep.variants' (a "
                             f"calibrated sigma: variant 'c3_calibrated'). Leave it {default!r}")


def divides(config, divisor: str, dividend: str) -> None:
    if value(config, divisor) <= 0 or value(config, dividend) % value(config, divisor):
        raise ValueError(f"config field {dividend!r}={value(config, dividend)} must be a "
                         f"multiple of {divisor!r}={value(config, divisor)}")


def existing(path: str, field: str) -> None:
    """``path`` (config field ``field``) exists."""
    if not path:
        raise FileNotFoundError(f"--config.{field} is empty; give the path of its file or "
                                "directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config.{field}: {path} does not exist; check the path")


def java() -> None:
    """The caption metrics (METEOR, tokenization) run on Java."""
    if shutil.which("java") is None:
        raise FileNotFoundError("the caption metrics need a Java runtime and none is on PATH; "
                                "install one (e.g. the 'default-jre' package)")


def tokenizer_fits(model_dir: str, field: str) -> None:
    """The tokenizer saved in ``model_dir`` (config field ``field``) has no id beyond the
    vocabulary of the model's config.json (an id past it trains on NaN)."""
    config_file = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_file):
        return
    try:
        with open(config_file, encoding="utf-8") as f:
            vocab = json.load(f).get("vocab_size")
    except (OSError, ValueError) as err:
        raise ValueError(f"--config.{field}: {config_file} is not readable JSON ({err})") from None
    if not isinstance(vocab, int):
        return
    from c3_jax.data.text import load_tokenizer
    size = len(load_tokenizer(model_dir))
    if size > vocab:
        raise ValueError(f"--config.{field}: the tokenizer in {model_dir} has {size} tokens, "
                         f"over the model's vocab_size={vocab}; use the tokenizer saved with "
                         "the model, or a model config with vocab_size >= the tokenizer's size")
