"""Cached stages of a composite run (a world, a tokenizer, a Connect, embeddings, each
captioner or generator): each records the fields that shaped it in
``<workdir>/stages/<name>.json`` and is reused only while they are equal. Paths inside the
workdir are recorded relative to it (``portable``), so that a workdir moved or copied
elsewhere reuses its stages."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from c3_jax import parallel
from c3_jax.workdir import Workdir, to_jsonable


def _record_path(wd: Workdir, name: str) -> str:
    return wd.file(os.path.join("stages", name.replace("/", "__") + ".json"))


WORKDIR = "<workdir>"  # stands for the workdir's path in stage records


def portable(value: Any, root: str) -> Any:
    """``value`` (JSON types, nested) with every path under ``root`` written relative to it,
    as '<workdir>/...'."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, root) for v in value]
    if isinstance(value, str) and (value == root or value.startswith(root + os.sep)):
        return WORKDIR + value[len(root):]
    return value


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def begin(wd: Workdir, name: str, fields: Mapping, outputs: Sequence[str],
          resumable: bool = False) -> bool:
    """Whether stage ``name`` is done with exactly these ``fields`` (then reuse it).

    Otherwise it is recorded as started with ``fields`` and its ``outputs`` are removed when
    they were built from other fields, by an older version (no record), or left unfinished
    by a stage that cannot resume; a ``resumable`` stage started with the same fields keeps
    them (it resumes from its own checkpoints)."""
    fields = portable(json.loads(json.dumps(to_jsonable(dict(fields)), sort_keys=True)),
                      wd.path)
    path = _record_path(wd, name)
    record = None
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
    same = record is not None and record.get("fields") == fields
    if parallel.agreed(same and record.get("done", False)):
        return True
    if wd.primary:
        if not (same and resumable):
            if record is not None and not same:
                changed = sorted(k for k in set(fields) | set(record.get("fields", {}))
                                 if fields.get(k) != record.get("fields", {}).get(k))
                logging.info("stage %s: %s changed, so it is built again", name, changed)
            for out in outputs:
                _remove(out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write(path, {"fields": fields, "done": False})
    parallel.barrier(f"stage {name}")
    return False


def finish(wd: Workdir, name: str) -> None:
    """Marks stage ``name`` (started by ``begin``) as done."""
    if wd.primary:
        path = _record_path(wd, name)
        with open(path) as f:
            record = json.load(f)
        _write(path, {**record, "done": True})
    parallel.barrier(f"stage {name} done")


def cached_members(wd: Workdir, kind: str, members: Sequence, shared: Mapping,
                   train: Callable[[list, Workdir, dict], None]) -> dict:
    """{member name: its Workdir ``<kind>s/<name>/``} for the members of a sweep (dataclasses
    with a ``name``), each a stage of its own (``shared`` fields plus the member's). The
    members not done yet are trained together: ``train(pending, sweep workdir, {name:
    Workdir})`` writes each one's outputs; the sweep's workdir (``<kind>s/sweep_<hash>``)
    is named by everything that shapes it, so a cut sweep resumes and no other mixes in."""
    out = {m.name: wd.file(os.path.join(f"{kind}s", m.name)) for m in members}
    pending = [m for m in members
               if not begin(wd, f"{kind}_{m.name}", {**shared, "member": dataclasses.asdict(m)},
                            [out[m.name]])]
    if pending:
        key = json.dumps(portable(to_jsonable({**shared, "members": [
            dataclasses.asdict(m) for m in pending]}), wd.path), sort_keys=True)
        tag = hashlib.sha1(key.encode()).hexdigest()[:10]
        train(pending, Workdir(wd.file(os.path.join(f"{kind}s", f"sweep_{tag}"))),
              {m.name: Workdir(out[m.name]) for m in pending})
        for m in pending:
            finish(wd, f"{kind}_{m.name}")
    return {name: Workdir(path) for name, path in out.items()}


def _write(path: str, record: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
