"""Running an experiment: config validation, dispatch, and the workdir's run outputs."""
from __future__ import annotations

import importlib
import json
import os
import time
from typing import Callable, Mapping

from absl import logging

from c3_jax.workdir import Workdir

# experiment name -> "module:function"; each module also defines FIELDS[experiment].
EXPERIMENTS = {
    "geometry_synthetic": "c3_jax.geometry_runs:run_synthetic",
    "geometry_mlp_collapse": "c3_jax.geometry_runs:run_mlp_collapse",
    "geometry_embeddings": "c3_jax.geometry_runs:run_embeddings",
    "embeddings_dataset": "c3_jax.data.dataset_runs:run_embeddings_dataset",
    "coco_extract": "c3_jax.data.dataset_runs:run_coco_extract",
    "caption": "c3_jax.train.captioning:run_caption",
    "caption_gap_sensitivity": "c3_jax.train.captioning:run_gap_sensitivity",
    "shapes_caption": "c3_jax.shapes_runs:run_shapes_caption",
    "generate": "c3_jax.train.generation:run_generate",
    "shapes_t2i": "c3_jax.shapes_t2i:run_shapes_t2i",
    "shapes_connect_study": "c3_jax.connect_study:run_connect_study",
}
# Experiments that resume from the checkpoints in their workdir (and keep its metrics).
RESUMABLE = {"caption", "caption_gap_sensitivity", "shapes_caption", "generate", "shapes_t2i",
             "shapes_connect_study"}


class ConfigError(ValueError):
    """A config that cannot run: unknown experiment, missing, unknown or mistyped field."""


def _type_ok(value, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def validate(config: Mapping, fields: Mapping[str, type], experiment: str) -> None:
    """Checks that ``config`` holds exactly ``fields`` (plus 'experiment'), with their types."""
    present = set(config.keys()) - {"experiment"}
    for name, expected in fields.items():
        if name not in config:
            raise ConfigError(f"config is missing field {name!r} ({expected.__name__}), "
                              f"required by experiment {experiment!r}")
        value = config[name]
        if not _type_ok(value, expected):
            raise ConfigError(f"config field {name!r} must be {expected.__name__}, got "
                              f"{type(value).__name__} {value!r}")
    unknown = sorted(present - set(fields))
    if unknown:
        raise ConfigError(f"config field(s) {unknown} are not used by experiment {experiment!r}; "
                          f"its fields are {sorted(fields)}")


def resolve(config) -> Callable:
    """Returns the run function for ``config.experiment`` after validating the config."""
    name = config.get("experiment") if hasattr(config, "get") else None
    if name is None:
        raise ConfigError(f"config has no 'experiment' field; set one of {sorted(EXPERIMENTS)}")
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known experiments: {sorted(EXPERIMENTS)}")
    module_name, fn_name = EXPERIMENTS[name].split(":")
    module = importlib.import_module(module_name)
    validate(config, module.FIELDS[name], name)
    return getattr(module, fn_name)


def _has_progress(wd: Workdir) -> bool:
    """Whether a run in ``wd`` got as far as a metric or a checkpoint."""
    steps = lambda d: os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))
    return os.path.exists(wd.file("metrics.jsonl")) or any(
        steps(wd.file(os.path.join("checkpoints", k))) for k in ("latest", "best"))


def _check_same_run(wd: Workdir, config: dict) -> None:
    """A resumable run's workdir must hold nothing, a run that stopped before its first
    metric or checkpoint (e.g. on bad input; its config.json is replaced), or a run of the
    same config."""
    if not os.path.exists(wd.file("config.json")) or not _has_progress(wd):
        return
    old = wd.read_json("config.json")
    if old != json.loads(json.dumps(config)):
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ConfigError(f"--workdir {wd.path} holds a run of another config (fields {changed} "
                          "differ); resume it with its own config or use a new --workdir")


def run(config, workdir: str, **objects) -> dict:
    """Validates ``config``, runs its experiment in ``workdir`` and writes the outputs;
    ``objects`` (e.g. an in-memory encoder) go to the experiment's run function."""
    from c3_jax import parallel
    parallel.maybe_initialize_distributed()  # before any JAX computation; then only process 0 writes
    fn = resolve(config)
    wd = Workdir(workdir)
    if config.experiment in RESUMABLE:
        _check_same_run(wd, config.to_dict())
    else:
        wd.reset_metrics()
    wd.write_json("config.json", config.to_dict())
    start = time.time()
    results = fn(config, wd, **objects)
    results["wall_time_s"] = time.time() - start
    wd.write_json("results.json", results)
    parallel.barrier(f"results {wd.path}")  # the other processes may read what process 0 wrote
    logging.info("results written to %s", wd.file("results.json"))
    return results
