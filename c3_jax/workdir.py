"""Run outputs in a workdir: config.json, metrics.jsonl, results.json and figures.

A workdir is ours when it holds the marker file ``.c3-jax-run`` (written before anything
else), or, for workdirs of versions before the marker, a config.json whose 'experiment'
names one of our experiments and no ``.git``. A run writes only into a directory that is
absent, empty or ours; anything else is refused with one line, and left as it is."""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Optional

import numpy as np

MARKER = ".c3-jax-run"  # written first into every workdir a run owns
MARKER_VERSION = 1


class WorkdirError(ValueError):
    """A --workdir that cannot hold the run: a file, not writable, or not ours."""


def to_jsonable(value: Any) -> Any:
    """Converts numpy/jax values nested in dicts and lists to plain JSON types; NaN and
    infinities become null (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return to_jsonable(value.item())
    return value


def _probe_writable(directory: str) -> None:
    """A probe file (os.access says yes to root even where writes fail); leaves nothing."""
    fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=directory)
    os.close(fd)
    os.remove(probe)


def existing_ancestor(path: str) -> str:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_usable(path: str) -> None:
    """Raises WorkdirError, naming ``path``, if a workdir there could not be created or
    written; creates nothing."""
    path = os.path.abspath(path)
    ancestor = existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise WorkdirError(f"--workdir {path} cannot be created: {ancestor} is a file; "
                           "choose another directory")
    try:
        _probe_writable(ancestor)
    except OSError as err:
        verb = "is not writable" if ancestor == path else "cannot be created"
        raise WorkdirError(f"--workdir {path} {verb}: {err}; choose another directory") from None


def read_config_json(path: str) -> Optional[dict]:
    """The dict in ``<path>/config.json``; None when absent, not JSON or not a dict."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ownership(path: str, experiments) -> str:
    """'new' (absent or empty), 'ours' (the marker) or 'legacy' (a run of ours from before
    the marker: a config.json naming one of ``experiments``, no .git); WorkdirError naming
    what was found for anything else."""
    if not os.path.exists(path):
        return "new"
    if not os.path.isdir(path):
        raise WorkdirError(f"--workdir {path} is a file; give a directory")
    transient = (".write_probe.", ".lock", MARKER + ".tmp")  # another process's, mid-start
    names = sorted(n for n in os.listdir(path) if not n.startswith(transient))
    if not names:
        return "new"
    if os.path.isfile(os.path.join(path, MARKER)):
        return "ours"
    config = read_config_json(path)
    if config is not None and config.get("experiment") in experiments and ".git" not in names:
        return "legacy"
    if ".git" in names:
        found = "a git repository (.git)"
    elif config is not None:
        found = "a config.json that is not a c3-jax run's (no known 'experiment' field)"
    elif os.path.exists(os.path.join(path, "config.json")):
        found = "a config.json that is not a JSON object"
    else:
        found = f"{len(names)} entries, e.g. {', '.join(names[:3])}"
    raise WorkdirError(f"--workdir {path} is not a c3-jax run (no {MARKER}): it holds {found}; "
                       "give an empty or new directory (nothing there was changed)")


def write_marker(path: str, experiment: str) -> None:
    """Marks ``path`` as a workdir of ours (before any other file of the run)."""
    marker = os.path.join(path, MARKER)
    if os.path.exists(marker):
        return
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"c3_jax_workdir": MARKER_VERSION, "experiment": experiment}, f)
        f.write("\n")
    os.replace(tmp, marker)


def _is_primary() -> bool:
    import jax
    return jax.process_index() == 0


class Workdir:
    """Writes a run's files; creates the directory and checks it is writable.

    With several JAX processes sharing a workdir only process 0 (``primary``) writes;
    the others' writes are no-ops, and reads see process 0's files.
    """

    def __init__(self, path: str, primary: Optional[bool] = None):
        self.path = os.path.abspath(path)
        self.primary = _is_primary() if primary is None else primary
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            raise WorkdirError(f"--workdir {self.path} cannot be created: {err}; choose "
                               "another directory") from None
        try:
            _probe_writable(self.path)
        except OSError as err:
            raise WorkdirError(f"--workdir {self.path} is not writable: {err}; choose another "
                               "directory") from None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, data: Any) -> str:
        if not self.primary:
            return self.file(name)
        tmp = self.file(name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(to_jsonable(data), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
        os.replace(tmp, self.file(name))
        return self.file(name)

    def write_text(self, name: str, text: str) -> str:
        if self.primary:
            with open(self.file(name + ".tmp"), "w") as f:
                f.write(text)
            os.replace(self.file(name + ".tmp"), self.file(name))
        return self.file(name)

    def reset_metrics(self) -> None:
        """Starts an empty metrics.jsonl (runs that resume append instead)."""
        if not self.primary:
            return
        open(self.file("metrics.jsonl"), "w").close()

    def truncate_metrics(self, step: int) -> None:
        """Keeps the metrics of steps <= ``step`` (a resumed run re-logs the later ones)."""
        if not self.primary:
            return
        every = self.read_metrics()
        rows = [r for r in every if r.get("step", 0) <= step]
        if len(rows) == len(every):
            return
        tmp = self.file("metrics.jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self.file("metrics.jsonl"))

    def read_metrics(self) -> list:
        """The rows of metrics.jsonl (none if it does not exist)."""
        if not os.path.exists(self.file("metrics.jsonl")):
            return []
        with open(self.file("metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def log_metrics(self, step: int, metrics: dict) -> None:
        if not self.primary:
            return
        with open(self.file("metrics.jsonl"), "a") as f:
            row = to_jsonable({"step": int(step), **metrics})
            f.write(json.dumps(row, allow_nan=False) + "\n")

    def read_json(self, name: str) -> Any:
        with open(self.file(name)) as f:
            return json.load(f)
