"""Running an experiment: every check of its config and workdir first, then one run that
owns the workdir (a lock) and writes config.json, metrics, results.json and figures."""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import glob
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from typing import Callable, Mapping


import ml_collections

from c3_jax import parallel
from c3_jax.experiments import EXPERIMENTS, RENAMED, RESUMABLE, STAGED
from c3_jax.workdir import Workdir, check_usable, ownership, read_config_json, write_marker

# Config fields (at any depth) that name files or directories: '~' is expanded and a relative
# path resolved against the current directory, so config.json records absolute paths.
PATH_FIELDS = ("embeddings", "captions", "dataset_dir", "data_dir", "clip", "annotations",
               "image_root", "gpt2", "restore_from", "init_from", "inception_weights",
               "official_checkpoint")
ORBAX_TMP = "*.orbax-checkpoint-tmp*"  # what an interrupted Orbax save leaves


class ConfigError(ValueError):
    """A config or workdir that cannot run: unknown experiment, missing, unknown, mistyped
    or out-of-range field, or a workdir that holds another run."""


def _type_ok(value, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is tuple:  # a list: the tuple as config.json gives it back
        return isinstance(value, (tuple, list))
    return isinstance(value, expected)


def validate(config: Mapping, fields: Mapping[str, type], experiment: str,
             prefix: str = "") -> None:
    """Checks that ``config`` holds exactly ``fields`` (plus 'experiment' at the top), with
    their types (a nested dict of fields: a nested config), and that no number is NaN or
    infinite."""
    present = set(config.keys()) - {"experiment"}
    for name, expected in fields.items():
        field = prefix + name
        if name not in config:
            kind = "config" if isinstance(expected, dict) else expected.__name__
            raise ConfigError(f"config is missing field {field!r} ({kind}), "
                              f"required by experiment {experiment!r}")
        value = config[name]
        if isinstance(expected, dict):
            if not hasattr(value, "items"):
                raise ConfigError(f"config field {field!r} must be a nested config, got "
                                  f"{type(value).__name__} {value!r}")
            validate(value, expected, experiment, field + ".")
            continue
        if not _type_ok(value, expected):
            raise ConfigError(f"config field {field!r} must be {expected.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"config field {field!r} is {value}; it must be a finite number")
    unknown = sorted(present - set(fields))
    if unknown:
        hints = [f"{prefix + k!r} -> {prefix + m[0]!r}" for k in unknown
                 for m in [difflib.get_close_matches(k, list(fields), 1)] if m]
        raise ConfigError(
            f"config field(s) {[prefix + k for k in unknown]} are not used by experiment "
            f"{experiment!r}; " + (f"did you mean {', '.join(hints)}? " if hints else "")
            + f"its fields are {sorted(prefix + k for k in fields)}")


def expand_path(value: str) -> str:
    """``value`` with '~' expanded and made absolute ('' stays '')."""
    return os.path.abspath(os.path.expanduser(value)) if value else value


def resolve_paths(config) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose path fields (``PATH_FIELDS``, at any depth; 'embeddings'
    may list several, comma-separated) are absolute, '~' expanded."""
    def resolved(data: dict) -> dict:
        out = {}
        for name, value in data.items():
            if isinstance(value, dict):
                value = resolved(value)
            elif name in PATH_FIELDS and isinstance(value, str) and value.strip():
                parts = value.split(",") if name == "embeddings" else [value]
                value = ",".join(expand_path(p.strip()) for p in parts)
            out[name] = value
        return out
    return ml_collections.ConfigDict(resolved(config.to_dict()))


def resolve(config) -> Callable:
    """The run function for ``config.experiment``, after checking the config's field names
    and types (``check_values`` checks the values)."""
    name = config.get("experiment") if hasattr(config, "get") else None
    if name is None:
        raise ConfigError(f"config has no 'experiment' field; set one of {sorted(EXPERIMENTS)}")
    if name in RENAMED:
        raise ConfigError(f"experiment {name!r} is now {RENAMED[name]!r} (named after its "
                          f"module); set experiment={RENAMED[name]!r}")
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known experiments: {sorted(EXPERIMENTS)}")
    validate(config, _module(name).FIELDS[name], name)
    return getattr(_module(name), EXPERIMENTS[name].split(":")[1])


def _module(experiment: str):
    """The module of an experiment (imported when first needed)."""
    return importlib.import_module(EXPERIMENTS[experiment].split(":")[0])


def check_values(config) -> None:
    """The experiment's own ``check(config)``: value ranges, variant names, input files and
    tools, so that a bad value fails before anything is written or computed."""
    check = getattr(_module(config.experiment), "check", None)
    if check is not None:
        try:
            check(config)
        except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                IsADirectoryError) as err:
            raise ConfigError(str(err)) from None


def _has_progress(path: str) -> bool:
    """Whether a run in ``path`` got as far as a metric, a checkpoint, a stage or results."""
    steps = lambda d: os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))
    return (any(os.path.exists(os.path.join(path, f))
                for f in ("metrics.jsonl", "results.json", "stages"))
            or any(steps(os.path.join(path, "checkpoints", k)) for k in ("latest", "best")))


def check_workdir(path: str, config: dict) -> None:
    """A workdir must be absent or empty, or be ours (``workdir.ownership``) and hold a run
    that stopped before any progress (its config.json is replaced) or a run of this
    experiment: of the same config for a trainer (it resumes) or for a one-shot experiment
    (it is redone); of any config of the same experiment for a composite run (its stages
    decide what is reused). Anything else is refused, and left as it is."""
    if ownership(path, EXPERIMENTS) == "new":
        return
    if not os.path.exists(os.path.join(path, "config.json")) or not _has_progress(path):
        return
    old = read_config_json(path)
    if old is None:
        raise ConfigError(f"--workdir {path}: its config.json is not a JSON object; restore it "
                          "or use a new --workdir")
    new = json.loads(json.dumps(config))
    if old == new or (config["experiment"] in STAGED and old.get("experiment") ==
                      config["experiment"]):
        return
    old, new = dotted(old), dotted(new)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise ConfigError(f"--workdir {path} holds a run of another config (fields {changed} "
                      "differ); resume it with its own config or use a new --workdir")


def dotted(config: dict, prefix: str = "") -> dict:
    """{'a.b': value} of a nested config's fields, by their dotted paths."""
    out = {}
    for k, v in config.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@contextlib.contextmanager
def workdir_lock(wd: Workdir):
    """Holds ``<workdir>/.lock`` while a run owns the workdir (process 0 of a run takes
    it); a second run on the same workdir is refused."""
    if not wd.primary:
        yield
        return
    path = wd.file(".lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"--workdir {wd.path} is in use by another run (process {owner}); "
                          "wait for it to finish or use another --workdir") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        os.remove(path)
        handle.close()


def remove_orbax_tmp(path: str) -> list:
    """Removes the temporary folders of Orbax saves that never finished (a run that was
    cut) anywhere under ``path``; returns them."""
    found = sorted(glob.glob(os.path.join(glob.escape(path), "**", ORBAX_TMP), recursive=True))
    for tmp in found:
        if not os.path.lexists(tmp):  # inside a folder removed just before
            continue
        shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else os.remove(tmp)
    return found


def provenance() -> dict:
    """The code and library versions a run used (recorded in results.json)."""
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "grain"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"git_commit": commit, "versions": versions, "python": sys.version.split()[0]}


def run(config, workdir: str, **objects) -> dict:
    """Checks ``config`` and ``workdir``, then runs the experiment there and writes its
    outputs; ``objects`` (e.g. an in-memory encoder) go to the experiment's run function."""
    parallel.maybe_initialize_distributed()  # before any JAX computation
    if not workdir or not str(workdir).strip():
        raise ConfigError("--workdir is empty; give the directory for the run's outputs")
    fn = resolve(config)
    config = resolve_paths(config)
    path = expand_path(str(workdir))
    check_usable(path)
    check_workdir(path, config.to_dict())
    check_values(config)
    wd = Workdir(path)
    if wd.primary:
        write_marker(wd.path, config.experiment)
    with workdir_lock(wd):
        if wd.primary:
            remove_orbax_tmp(wd.path)
        if config.experiment not in RESUMABLE | STAGED:
            wd.reset_metrics()
        wd.write_json("config.json", config.to_dict())
        start = time.time()
        try:
            results = fn(config, wd, **objects)
        except KeyboardInterrupt:
            if wd.primary:
                remove_orbax_tmp(wd.path)
            raise
        results["wall_time_s"] = time.time() - start
        results["provenance"] = provenance()
        wd.write_json("results.json", results)
        parallel.barrier(f"results {wd.path}")  # the others may read what process 0 wrote
    return results
