"""Orbax checkpoints of a training run: latest and best, the data position, and restores
that name what does not fit."""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional

import etils.epath
import jax
import orbax.checkpoint as ocp
from absl import logging

from c3_jax.train.state import TrainState

class Checkpoints:
    """Orbax checkpoints of a run: ``latest/`` (periodic, for resuming) and, when a
    validation metric is given, ``best/`` (the best by it, for evaluation).

    Each holds the TrainState and, if given, the data iterator's position. Every process
    calls save/restore (Orbax writes each array shard once); the position of a
    ``pipeline.GlobalBatchIterator`` is one JSON item, the same for any process count, so
    a run saved with N processes resumes with M.
    """

    def __init__(self, directory: str, keep: int = 2, best_mode: str = "min",
                 create: bool = True):
        self.directory = os.path.abspath(directory)
        # Distinct barrier names: with several processes, 'latest' and 'best' saving the
        # same step at once would otherwise share Orbax's barrier key (and fail).
        opts = lambda name, **kw: ocp.CheckpointManagerOptions(
            create=create, multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=name), **kw)
        self.latest = ocp.CheckpointManager(os.path.join(self.directory, "latest"),
                                            options=opts("latest", max_to_keep=keep))
        self.best = ocp.CheckpointManager(
            os.path.join(self.directory, "best"),
            options=opts("best", max_to_keep=1, best_fn=lambda m: m["value"],
                         best_mode=best_mode))

    @staticmethod
    def _args(state, data_iter, restore: bool):
        item = ocp.args.StandardRestore(state) if restore else ocp.args.StandardSave(state)
        args = {"state": item}
        if data_iter is not None and hasattr(data_iter, "position"):
            args["data"] = ocp.args.JsonRestore() if restore else ocp.args.JsonSave(
                data_iter.position())
        elif data_iter is not None:  # a plain grain iterator: one file per process
            import grain
            cls = grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave
            args["data"] = cls(data_iter)
        return ocp.args.Composite(**args)

    def save(self, step: int, state: TrainState, data_iter=None,
             best_value: Optional[float] = None) -> None:
        self.latest.save(step, args=self._args(state, data_iter, False))
        if best_value is not None:
            self.best.save(step, args=self._args(state, None, False),
                           metrics={"value": float(best_value)})

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def resume_or_init(self, abstract_state, shardings, data_iter, init) -> tuple:
        """(state, step): the latest checkpoint (moving ``data_iter`` to its position) or,
        with none, ``init()`` at step 0."""
        start = self.latest_step() or 0
        if not start:
            return init(), 0
        state = self.restore(abstract(abstract_state, shardings), data_iter)
        logging.info("resumed from step %d in %s", start, self.directory)
        return state, start

    def restore(self, abstract_state: TrainState, data_iter=None, step: Optional[int] = None,
                best: bool = False) -> TrainState:
        """Restores ``latest`` (or ``best``) into the shardings of ``abstract_state``."""
        manager = self.best if best else self.latest
        step = (manager.best_step() if best else manager.latest_step()) if step is None else step
        if step is None:
            raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in "
                                    f"{manager.directory}")
        position = data_iter is not None and hasattr(data_iter, "set_position")
        step_dir = os.path.join(str(manager.directory), str(step))
        legacy = _legacy_batches(os.path.join(step_dir, "data"), data_iter) if position else None
        try:
            _check_fits(step_dir, abstract_state)
            restored = manager.restore(step, args=self._args(
                abstract_state, None if legacy is not None else data_iter, True))
        except CheckpointError:
            raise
        except Exception as err:  # Orbax/TensorStore raise many types for damaged files
            raise CheckpointError(f"checkpoint {step_dir} could not be restored (corrupt or "
                                  f"incomplete): {_brief(err)}") from err
        if position:
            data_iter.set_position(restored["data"] if legacy is None else
                                   {**data_iter.position(), "global_batches": legacy})
        return restored["state"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: corrupt, incomplete, or of another model."""


def _brief(err: Exception, limit: int = 400) -> str:
    """The error's type and message, without TensorStore's long spec, at most ``limit`` chars."""
    text = f"{type(err).__name__}: {err}".split(" [tensorstore_spec=")[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _shapes(tree) -> dict:
    """{'params/dense/kernel': shape} of a pytree of arrays, or of a checkpoint's metadata."""
    return {jax.tree_util.keystr(path, simple=True, separator="/"): getattr(leaf, "shape", None)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_fits(step_dir: str, abstract_state) -> None:
    """Raises CheckpointError, naming an array, if the checkpoint's state has other arrays
    or shapes than ``abstract_state`` (a checkpoint of another architecture or config)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = _shapes(handler.metadata(etils.epath.Path(step_dir) / "state").tree)
    finally:
        handler.close()
    here = _shapes(abstract_state)
    diff = sorted(k for k in saved.keys() | here.keys() if saved.get(k) != here.get(k))
    if diff:
        shape = lambda shapes: shapes.get(diff[0], "absent")
        raise CheckpointError(
            f"checkpoint {step_dir} holds a model of another architecture: {len(diff)} "
            f"array(s) differ, e.g. {diff[0]!r} is {shape(saved)} there but {shape(here)} "
            "here; restore it with the config it was trained with")


def _legacy_batches(directory: str, data_iter) -> Optional[int]:
    """Global batches read according to a data position saved by grain's own handler (one
    process, before positions became process-count independent); None if not that format."""
    files = glob.glob(os.path.join(directory, "process_*-of-*.json"))
    if not files:
        return None
    if len(files) > 1 or not files[0].endswith("process_0-of-1.json"):
        raise ValueError(f"{directory} holds per-process data positions of an older multi-"
                         "process run, whose batches differ from this version's; start the "
                         "run in a new --workdir")
    with open(files[0]) as f:
        state = json.load(f)
    # One process read records 0..last of the same seeded order, in global batches.
    records = int(state["last_seen_indices"]["0"]) + 1
    return records // data_iter.position()["global_batch"]


def abstract(tree, shardings=None):
    """ShapeDtypeStructs of ``tree`` (with ``shardings``), the target of a restore."""
    if shardings is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)


def restore_state(directory: str, abstract_state, best: bool = True) -> Any:
    """The state of a finished run's checkpoint (``best`` if it has one, else ``latest``)."""
    ckpts = Checkpoints(directory, create=False)  # reads only: creates nothing there
    try:
        use_best = best and ckpts.best.best_step() is not None
        return ckpts.restore(abstract_state, best=use_best)
    finally:
        ckpts.close()


def restore_params(directory: str, abstract_state: TrainState, best: bool = True) -> Any:
    """Params of a finished run's checkpoint (``best`` if it has one, else ``latest``)."""
    return restore_state(directory, abstract_state, best).params
