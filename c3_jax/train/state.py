"""Training state, device mesh and shardings, optimizers, and Orbax checkpoints."""
from __future__ import annotations

import os
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")  # a batch is split over every device


@flax.struct.dataclass
class TrainState:
    """What a checkpoint holds besides the data iterator: step, params, optimizer state."""
    step: jax.Array
    params: Any
    opt_state: Any


def barrier(name: str) -> None:
    """Waits for every process (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def agreed(value: bool) -> bool:
    """Process 0's ``value`` on every process (e.g. whether a file exists, so that all
    processes take the same branch)."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def maybe_initialize_distributed() -> None:
    """Starts JAX's multi-controller runtime when the environment describes several processes.

    Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (a loopback
    coordinator keeps the coordinator and CPU collectives on 127.0.0.1). Auto-detected by
    ``jax.distributed.initialize()`` itself: SLURM jobs of several tasks, GKE TPU pods, and
    any environment when C3_DISTRIBUTED=1 (e.g. Cloud TPU VM slices, launch/tpu_pod.sh).
    """
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    forced = os.environ.get("C3_DISTRIBUTED", "0") not in ("", "0")
    if jax.distributed.is_initialized() or not (explicit or slurm or tpu_pod or forced):
        return
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process
    if explicit and not all(os.environ.get(k) for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")):
        raise ValueError(f"JAX_COORDINATOR_ADDRESS={explicit} is set, so JAX_NUM_PROCESSES and "
                         "JAX_PROCESS_ID must be set too (launch/local_multiprocess.sh sets all "
                         "three)")
    if explicit:
        local = explicit.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1")
        if local:  # processes of one machine (launch/local_multiprocess.sh, tests)
            _gloo_on_loopback()
        jax.distributed.initialize(explicit, int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]),
                                   coordinator_bind_address=explicit if local else None)
    else:
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _gloo_on_loopback() -> None:
    """Makes JAX's CPU collectives (gloo) listen on 127.0.0.1 rather than on the address
    of the machine's hostname (jaxlib has no setting for it; skipped if its API differs)."""
    import functools
    import inspect
    try:
        from jax._src import xla_bridge
        make = xla_bridge._jax.make_gloo_tcp_collectives
        if "hostname" not in (make.__doc__ or "") and "hostname" not in str(
                inspect.signature(make)):
            return
    except (AttributeError, ImportError, TypeError, ValueError):
        return
    if not isinstance(make, functools.partial):
        xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(make, hostname="127.0.0.1")


def guard_finite(new_state, old_state, metrics: dict, skip: bool):
    """In a jitted step: adds a 'nonfinite' metric (1 when any metric, e.g. the loss or a
    gradient norm, is NaN or Inf); with ``skip`` such a step keeps ``old_state`` (only
    its step counter advances)."""
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    if skip:
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, old_state)
        new_state = kept.replace(step=new_state.step)
    return new_state, {**metrics, "nonfinite": (~ok).astype(jnp.int32)}


class NonFiniteWatch:
    """The first step whose metrics were not finite, tracked on device (no host sync per
    step) and read when the trainer logs or is about to save."""

    def __init__(self):
        self.first = jnp.asarray(-1, jnp.int32)
        self._update = jax.jit(lambda f, bad, step: jnp.where((f < 0) & (bad > 0), step, f))

    def update(self, metrics: dict, step: int) -> None:
        self.first = self._update(self.first, metrics["nonfinite"], step)

    def check(self, ckpts: "Checkpoints", skip: bool) -> None:
        """Stops (after finishing pending saves) if a step was not finite, unless skipping."""
        first = int(self.first)
        if first < 0:
            return
        if skip:
            logging.warning("non-finite loss or gradients from step %d on; those steps were "
                            "skipped (skip_nonfinite)", first)
            self.first = jnp.asarray(-1, jnp.int32)
            return
        ckpts.wait()
        last = ckpts.latest_step()
        ckpts.close()
        raise FloatingPointError(
            f"non-finite loss or gradients at step {first}; stopped without saving it. The "
            f"last checkpoint ({'none' if last is None else f'step {last}'}) in "
            f"{ckpts.directory} is intact; lower the learning rate, check the data for NaN/Inf, "
            "or set --config.skip_nonfinite=True to skip such steps")


def local_batch_size(batch_size: int, available: int, what: str) -> int:
    """This process's share of a global batch, once the batch is known to split over the
    devices and to fit in the ``available`` items (``what``: e.g. 'training pairs')."""
    n = jax.device_count()
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {n} devices")
    if available < batch_size:
        raise ValueError(f"{available} {what} are fewer than batch_size={batch_size}")
    return batch_size // jax.process_count()


def make_mesh(fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over all devices; ``fsdp`` devices share each parameter."""
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {n}")
    # Devices grouped by process, so that process p holds rows [p*L, (p+1)*L) of a batch
    # split over (data, fsdp): the slice its data loader reads (data/pipeline.py).
    devices = sorted(jax.devices(), key=lambda d: d.process_index)
    return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices."""
    return NamedSharding(mesh, P(DATA_AXES))


def _leaf_spec(shape: tuple, fsdp: int, min_size: int) -> P:
    """Shards the largest axis divisible by ``fsdp`` (for arrays of ``min_size``+ elements)."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    axes = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in axes:
        if shape[i] % fsdp == 0:
            return P(*([None] * i + ["fsdp"]))
    return P()


def state_shardings(mesh: Mesh, abstract_tree, min_size: int = 2 ** 14):
    """NamedShardings for params / optimizer state: replicated over 'data', split over 'fsdp'."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, _leaf_spec(a.shape, fsdp, min_size)),
                        abstract_tree)


def warmup_linear_decay(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` then linear decay to 0 at ``total_steps`` (ClipCap's)."""
    warmup = max(min(warmup_steps, total_steps), 1)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
                                [warmup])


def adamw(lr: float, warmup_steps: int, total_steps: int, weight_decay: float,
          trainable: Optional[Any] = None, accumulate: int = 1) -> optax.GradientTransformation:
    """AdamW with warmup/decay; params where the ``trainable`` pytree is False stay frozen;
    ``accumulate`` > 1 averages gradients over that many micro-steps per update."""
    tx = optax.adamw(warmup_linear_decay(lr, warmup_steps, total_steps),
                     weight_decay=weight_decay)
    if trainable is not None:
        labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return optax.MultiSteps(tx, accumulate) if accumulate > 1 else tx


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
    import etils.epath
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
    import glob
    import json
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


def to_host(tree) -> Any:
    """A pytree of (possibly sharded, multi-process) arrays as numpy, whole, on every host:
    an array on this process's devices alone is read as it is, a global one gathered."""
    from jax.experimental import multihost_utils
    gather = lambda a: (a if getattr(a, "is_fully_addressable", True) else
                        multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(lambda a: np.asarray(gather(a)), tree)
