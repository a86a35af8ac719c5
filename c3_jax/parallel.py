"""Several devices and processes: distributed start-up, agreement between processes,
the device mesh and shardings, and moving arrays between host and devices."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from c3_jax.progress import progress_bar

DATA_AXES = ("data", "fsdp")  # a batch is split over every device

def barrier(name: str) -> None:
    """Waits for every process (no-op with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agreed(value: bool) -> bool:
    """Process 0's ``value`` on every process (e.g. whether a file exists, so that all
    processes take the same branch)."""
    if jax.process_count() == 1:
        return bool(value)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def on_process_zero(fn: Callable[[], Any]) -> Any:
    """``fn()``, a JSON value, computed by process 0 alone and given to every process: for
    host work whose result every process needs and none should repeat (the caption metrics:
    one METEOR JVM of 2 GB and about 10 s of start-up per process otherwise). An exception
    in process 0 is raised there as it is and in the other processes as a RuntimeError
    with its message, so that none of them waits for the others."""
    if jax.process_count() == 1:
        return fn()
    if jax.process_index() == 0:
        try:
            value = fn()
        except Exception as e:
            broadcast_bytes(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            raise
        return json.loads(broadcast_bytes(json.dumps({"value": value}).encode()))["value"]
    out = json.loads(broadcast_bytes(b""))
    if "error" in out:
        raise RuntimeError(f"process 0 failed: {out['error']}")
    return out["value"]


def broadcast_bytes(payload: bytes) -> bytes:
    """Process 0's ``payload`` on every process (the others pass anything)."""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(payload), np.int64)))
    data = (np.frombuffer(payload, np.uint8) if jax.process_index() == 0
            else np.zeros(size, np.uint8))
    return np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()


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


def member_mesh(members: int, fsdp: int = 1, split_batch: bool = True) -> Mesh:
    """The mesh of a sweep of ``members``: its 'data' axis (members split over it) as large
    as divides the devices (over ``fsdp``) without exceeding the members, so few or no
    padding members are computed, and a multiple of the process count (every process takes
    part). With ``split_batch`` the rest of the devices form the 'fsdp' axis (each member's
    batch split over it), and fewer members than processes are not padded (a member's
    'fsdp' devices then span processes: a run of one captioner has the same mesh for any
    process count, so its checkpoints resume with another); without, the mesh holds only
    the 'data' devices, spread evenly over the processes (the others would compute copies)."""
    n, processes = jax.device_count(), jax.process_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {n}")
    outer = n // fsdp
    divisors = [k for k in range(1, outer + 1) if outer % k == 0]
    sizes = [k for k in divisors if k % processes == 0]
    fits = [k for k in sizes if k <= members]
    if not fits and split_batch:
        fits = [k for k in divisors if k <= members]
    data = max(fits or sizes[:1])
    if split_batch:
        return make_mesh(n // data)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))[::n // data]
    return Mesh(np.asarray(devices).reshape(data, 1), DATA_AXES)


def member_shardings(mesh: Mesh, abstract_tree, min_size: int = 2 ** 14):
    """NamedShardings for a sweep's stacked state: the leading (member) axis split over
    'data', each member's arrays as in ``state_shardings`` (split over 'fsdp')."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, P("data", *_leaf_spec(
        a.shape[1:], fsdp, min_size))), abstract_tree)


@dataclasses.dataclass(frozen=True)
class TreeShardings:
    """A tree of shardings as a hashable value (its leaves and structure), so that a jitted
    function can take it as a static argument and place its outputs with ``constrain``."""
    leaves: tuple
    treedef: Any

    @classmethod
    def of(cls, tree) -> "TreeShardings":
        leaves, treedef = jax.tree.flatten(tree)
        return cls(tuple(leaves), treedef)

    def constrain(self, tree):
        """``tree`` (inside a jitted function) laid out in these shardings."""
        return jax.lax.with_sharding_constraint(tree, jax.tree.unflatten(self.treedef,
                                                                         self.leaves))


def over_members(fn, mesh: Optional[Mesh] = None, loop: str = "vmap", shared: int = 0):
    """``fn`` over the leading member axis of its arguments (the last ``shared`` ones the
    same for every member), in one compiled program: vmapped (``loop`` 'vmap', the
    partitioner splitting the members over the devices), or the members one after another
    in a ``lax.map`` ('map') or a Python loop unrolled at trace time ('unroll'), each
    device of ``mesh``'s 'data' axis running its own members (``shard_map``; the other
    axes left to the partitioner; no mesh: every member over all devices)."""
    def run(members, same):
        one = lambda m: fn(*m, *same)
        if loop == "vmap":
            return jax.vmap(one)(members)
        if loop == "map":
            return jax.lax.map(one, members)
        count = jax.tree.leaves(members)[0].shape[0]
        outs = [one(jax.tree.map(lambda a: a[k], members)) for k in range(count)]
        return jax.tree.map(lambda *a: jax.numpy.stack(a), *outs)

    def call(*args):
        members, same = args[:len(args) - shared], args[len(args) - shared:]
        if loop == "vmap" or mesh is None or mesh.shape["data"] == 1:
            return run(members, same)
        return jax.shard_map(run, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"),
                             axis_names=manual_axes(mesh), check_vma=False)(members, same)
    return call


def manual_axes(mesh: Mesh) -> set:
    """The axes ``over_members``' shard_map splits by hand: 'data', and also every other
    axis when each has one device. An axis of several devices is left to the partitioner,
    which then has an open sharding constraint after every operation of the member's
    program to propagate (the GAN step: about 10,000 of them, about a quarter of its
    compile time)."""
    if all(size == 1 for name, size in mesh.shape.items() if name != "data"):
        return set(mesh.axis_names)
    return {"data"}


def member_batch_sharding(mesh: Mesh) -> NamedSharding:
    """A sweep's batches [members, batch, ...]: members over 'data', the batch over 'fsdp'."""
    return NamedSharding(mesh, P("data", "fsdp"))


def put_members(mesh: Mesh, tree) -> Any:
    """Host arrays with a leading member axis, held whole by every process, placed with the
    members over 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda a: put_whole(a, sharding), tree)


def put_whole(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole: each process
    places its own devices' parts."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def to_host(tree) -> Any:
    """A pytree of (possibly sharded, multi-process) arrays as numpy, whole, on every host:
    an array on this process's devices alone is read as it is, a global one gathered."""
    gather = lambda a: (a if getattr(a, "is_fully_addressable", True) else
                        multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(lambda a: np.asarray(gather(a)), tree)


def data_parallel(fn: Callable, params, batches, desc: str,
                  devices: Optional[Sequence] = None) -> np.ndarray:
    """``sharded_function(fn, params, devices)`` applied to every batch of host arrays,
    the outputs concatenated."""
    apply = sharded_function(fn, params, devices)
    return np.concatenate([apply(*arrays) for arrays in progress_bar(batches, desc=desc,
                                                                      unit="batch")])


@functools.partial(jax.jit, static_argnums=(0, 1))
def rows_sharded(fn: Callable, shard: NamedSharding, params, arrays) -> jax.Array:
    """``fn(params, arrays)``, its output's rows laid out as ``shard``. ``fn`` is a static
    argument: one that is a value (a frozen dataclass) is traced once per equal value."""
    return jax.lax.with_sharding_constraint(fn(params, arrays), shard)


def sharded_function(fn: Callable, params, devices: Optional[Sequence] = None) -> Callable:
    """``f(*host arrays) -> host array``: jitted ``fn(params, arrays)`` with the arrays'
    rows sharded over ``devices``: by default all devices of all processes, every process
    passing the same arrays; with ``jax.local_devices()`` each process computes its own
    arrays alone. Any row count (the last rows are repeated to fill the devices). ``fn``
    must be hashable (``rows_sharded``)."""
    devices = jax.devices() if devices is None else list(devices)
    mesh = Mesh(np.array(devices), ("data",))
    shard, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    params = jax.device_put(params, replicated)

    def apply(*arrays) -> np.ndarray:
        n = len(arrays[0])
        pad = (-n) % len(devices)  # pad to a multiple of the device count
        arrays = tuple(np.concatenate([a, np.repeat(a[-1:], pad, 0)]) for a in arrays)
        # Every process holds the whole batch; each places its devices' rows.
        arrays = tuple(put_whole(a, shard) for a in arrays)
        return to_host(rows_sharded(fn, shard, params, arrays))[:n]

    return apply
