"""Training state, device mesh and shardings, optimizers, and Orbax checkpoints."""
from __future__ import annotations

import os
from typing import Any, Optional

import flax
import jax
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


def maybe_initialize_distributed() -> None:
    """Starts JAX's multi-controller runtime when the environment describes several processes.

    Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM and TPU
    pods are auto-detected by ``jax.distributed.initialize()`` itself.
    """
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    if jax.distributed.is_initialized() or not (explicit or slurm or tpu_pod):
        return
    if explicit:
        jax.distributed.initialize(explicit, int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over all devices; ``fsdp`` devices share each parameter."""
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {n}")
    return Mesh(np.asarray(jax.devices()).reshape(n // fsdp, fsdp), DATA_AXES)


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

    Each holds the TrainState and, if given, the grain iterator's position.
    """

    def __init__(self, directory: str, keep: int = 2, best_mode: str = "min"):
        self.directory = os.path.abspath(directory)
        opts = lambda **kw: ocp.CheckpointManagerOptions(create=True, **kw)
        self.latest = ocp.CheckpointManager(os.path.join(self.directory, "latest"),
                                            options=opts(max_to_keep=keep))
        self.best = ocp.CheckpointManager(
            os.path.join(self.directory, "best"),
            options=opts(max_to_keep=1, best_fn=lambda m: m["value"], best_mode=best_mode))

    @staticmethod
    def _args(state, data_iter, restore: bool):
        import grain
        item = ocp.args.StandardRestore(state) if restore else ocp.args.StandardSave(state)
        args = {"state": item}
        if data_iter is not None:
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

    def restore(self, abstract_state: TrainState, data_iter=None, step: Optional[int] = None,
                best: bool = False) -> TrainState:
        """Restores ``latest`` (or ``best``) into the shardings of ``abstract_state``."""
        manager = self.best if best else self.latest
        step = (manager.best_step() if best else manager.latest_step()) if step is None else step
        if step is None:
            raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in "
                                    f"{manager.directory}")
        return manager.restore(step, args=self._args(abstract_state, data_iter, True))["state"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract(tree, shardings=None):
    """ShapeDtypeStructs of ``tree`` (with ``shardings``), the target of a restore."""
    if shardings is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)


def restore_state(directory: str, abstract_state, best: bool = True) -> Any:
    """The state of a finished run's checkpoint (``best`` if it has one, else ``latest``)."""
    ckpts = Checkpoints(directory)
    try:
        use_best = best and ckpts.best.best_step() is not None
        return ckpts.restore(abstract_state, best=use_best)
    finally:
        ckpts.close()


def restore_params(directory: str, abstract_state: TrainState, best: bool = True) -> Any:
    """Params of a finished run's checkpoint (``best`` if it has one, else ``latest``)."""
    return restore_state(directory, abstract_state, best).params


def to_host(tree) -> Any:
    """Gathers a (possibly sharded, multi-process) pytree to numpy on every host."""
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
