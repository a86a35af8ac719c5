"""grain input pipeline: one seeded global order for every process count, each process
loading its slice of every global batch, and iterator positions that any process count
can resume from."""
from __future__ import annotations

import functools
import json
import sys
from typing import Callable, Optional, Sequence

import grain.python as grain
import jax
import numpy as np

_STATE_VERSION = 1


class _Map(grain.MapTransform):
    def __init__(self, fn: Callable):
        self._fn = fn

    def map(self, element):
        return self._fn(element)


def _source_repr(source) -> str:
    """What identifies a data source in an iterator state (grain's rule: no in-memory data)."""
    return str(type(source)) if isinstance(source, (list, tuple, np.ndarray)) else repr(source)


class GlobalSliceSampler:
    """A grain sampler over process ``shard_index``'s rows of each global batch.

    Global batch ``b`` is records ``[b*B, (b+1)*B)`` of one seeded order of the source
    (grain's ``IndexSampler`` without sharding, so the order is that of a single
    process); this process reads rows ``[p*L, (p+1)*L)`` of each, ``L = B / shard_count``,
    starting at global batch ``start``. With ``drop_remainder`` a last incomplete global
    batch is left out on every process.
    """

    def __init__(self, num_records: int, global_batch: int, shard_index: int,
                 shard_count: int, *, shuffle: bool, num_epochs: Optional[int], seed: int,
                 start: int = 0, drop_remainder: bool = True):
        self.order = grain.IndexSampler(num_records, grain.ShardOptions(0, 1, True),
                                        shuffle=shuffle, num_epochs=num_epochs, seed=seed)
        self.global_batch, self.local = global_batch, global_batch // shard_count
        self.shard_index, self.shard_count, self.start = shard_index, shard_count, start
        total = None if num_epochs is None else num_records * num_epochs
        if total is None:
            self._len = sys.maxsize
        elif drop_remainder:
            self._len = max(total // global_batch - start, 0) * self.local
        else:  # one process: the last batch may be short
            self._len = max(total - start * global_batch, 0)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"GlobalSliceSampler({self.order!r}, global_batch={self.global_batch}, "
                f"shard={self.shard_index}/{self.shard_count}, start={self.start})")

    def __getitem__(self, index: int):
        if index < 0 or index >= self._len:
            raise IndexError(f"index {index} is out of bounds [0, {self._len})")
        batch, row = divmod(index, self.local)
        return self.order[(self.start + batch) * self.global_batch
                          + self.shard_index * self.local + row]


class GlobalBatchLoader:
    """Iterable over this process's slices of the global batches (see ``make_loader``)."""

    def __init__(self, source: Sequence, global_batch: int, shard_index: int,
                 shard_count: int, seed: int, shuffle: bool, num_epochs: Optional[int],
                 transform: Optional[Callable], drop_remainder: bool):
        self.source, self.global_batch = source, global_batch
        self.shard_index, self.shard_count = shard_index, shard_count
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.transform, self.drop_remainder = transform, drop_remainder

    def grain_loader(self, start: int = 0) -> grain.DataLoader:
        """The grain DataLoader that reads from global batch ``start`` on."""
        sampler = GlobalSliceSampler(len(self.source), self.global_batch, self.shard_index,
                                     self.shard_count, shuffle=self.shuffle,
                                     num_epochs=self.num_epochs, seed=self.seed, start=start,
                                     drop_remainder=self.drop_remainder)
        ops = ([_Map(self.transform)] if self.transform else []) + [
            grain.Batch(sampler.local, drop_remainder=self.drop_remainder)]
        # Records are read in this thread: grain's default 16 reader threads, with their
        # 500-record buffer polled on every record, cost twice the reading itself here
        # (decoding is Python-bound; the next batch is read while the device computes).
        return grain.DataLoader(data_source=self.source, sampler=sampler, operations=ops,
                                shard_options=grain.NoSharding(), worker_count=0,
                                read_options=grain.ReadOptions(num_threads=0,
                                                               prefetch_buffer_size=0))

    def identity(self) -> dict:
        """What a saved position must match to be restored here (no process count in it)."""
        order = grain.IndexSampler(len(self.source), grain.ShardOptions(0, 1, True),
                                   shuffle=self.shuffle, num_epochs=self.num_epochs,
                                   seed=self.seed)
        return {"order": repr(order), "global_batch": self.global_batch,
                "source": _source_repr(self.source)}

    def __iter__(self) -> "GlobalBatchIterator":
        return GlobalBatchIterator(self)


class GlobalBatchIterator:
    """Checkpointable iterator: ``get_state`` is the number of global batches read, the
    same on every process, so a run saved with N processes resumes with any other count.

    Works with ``grain.checkpoint.CheckpointSave/Restore`` (bytes state) as well as with
    a JSON item (``position`` / ``set_position``) that one process writes.
    """

    def __init__(self, loader: GlobalBatchLoader):
        self._loader = loader
        self._batches = 0
        self._it = iter(loader.grain_loader(0))

    def __iter__(self) -> "GlobalBatchIterator":
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        self._batches += 1
        return batch

    def position(self) -> dict:
        return {"version": _STATE_VERSION, "global_batches": self._batches,
                **self._loader.identity()}

    def set_position(self, position: dict) -> None:
        want = self._loader.identity()
        if position.get("version") != _STATE_VERSION:
            raise ValueError(f"data-iterator state version {position.get('version')!r} is "
                             f"not {_STATE_VERSION}: the checkpoint was written by another "
                             "version of c3_jax.data.pipeline")
        for key, value in want.items():
            if position.get(key) != value:
                raise ValueError(f"data-iterator state does not match this pipeline: {key} "
                                 f"is {position.get(key)!r} in the checkpoint and {value!r} "
                                 "here; resume with the run's own data and config")
        self._batches = int(position["global_batches"])
        self._it = iter(self._loader.grain_loader(self._batches))

    def get_state(self) -> bytes:
        return json.dumps(self.position()).encode()

    def set_state(self, state: bytes) -> None:
        self.set_position(json.loads(state.decode() if isinstance(state, bytes) else state))

    def start_prefetch(self) -> None:
        """Nothing to start: batches are read in this process (grain ``worker_count=0``)."""


def make_loader(source: Sequence, batch_size: int, seed: int, *, shuffle: bool = True,
                num_epochs: Optional[int] = None, shard_index: Optional[int] = None,
                shard_count: Optional[int] = None, transform: Optional[Callable] = None,
                drop_remainder: bool = True) -> GlobalBatchLoader:
    """A deterministic grain loader of this process's ``batch_size`` rows of each global batch.

    The global batch is ``batch_size * shard_count`` records of one order that depends
    only on ``seed`` (not on the process count); shard ``p`` (by default the JAX process
    index, of ``jax.process_count()``) gets its rows ``[p*batch_size, (p+1)*batch_size)``,
    which ``global_batch`` places there. ``transform`` maps one example (e.g. tokenize
    and pad a caption) before batching. ``iter(loader).get_state()`` / ``set_state``
    checkpoint the position, also across process counts.
    """
    if shard_index is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    elif shard_count is None:
        raise ValueError("shard_index needs shard_count")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if not drop_remainder and shard_count > 1:
        raise ValueError("drop_remainder=False needs one process: a short last global batch "
                         f"cannot be split over {shard_count} processes")
    if len(source) == 0:
        raise ValueError("the data source is empty")
    return GlobalBatchLoader(source, batch_size * shard_count, shard_index, shard_count, seed,
                             shuffle, num_epochs, transform, drop_remainder)


class MemberBatches:
    """Batches [members, batch, ...] of a sweep: member i reads ``sources[i]`` in the order
    of ``seeds[i]``; members with the same stream key (``keys[i]``, e.g. 'seed/field') share
    one stream. Every process reads the whole batch and ``place(array)`` puts it on the
    devices; the position (every stream's) is what a checkpoint saves."""

    def __init__(self, keys: Sequence[str], sources: Sequence, seeds: Sequence[int],
                 batch_size: int, fields: Sequence[str], place: Callable):
        self.keys, self.fields, self.place = list(keys), tuple(fields), place
        self.streams = {}
        for key, source, seed in zip(keys, sources, seeds):
            if key not in self.streams:
                self.streams[key] = iter(make_loader(source, batch_size, int(seed),
                                                     shard_index=0, shard_count=1))

    def __iter__(self) -> "MemberBatches":
        return self

    def __next__(self) -> dict:
        read = {k: next(it) for k, it in self.streams.items()}
        return {f: self.place(np.stack([read[k][f] for k in self.keys])) for f in self.fields}

    def position(self) -> dict:
        return {k: it.position() for k, it in self.streams.items()}

    def set_position(self, position: dict) -> None:
        if sorted(position) != sorted(self.streams):
            raise ValueError(f"the checkpoint's data streams {sorted(position)} are not this "
                             f"sweep's {sorted(self.streams)}; resume with the same members")
        for k, it in self.streams.items():
            it.set_position(position[k])


@functools.lru_cache(maxsize=64)
def _process_rows(sharding: jax.sharding.Sharding, rows: int) -> tuple:
    """(first, stop) rows of a ``rows``-long leading axis on this process's devices."""
    spans = [idx[0].indices(rows)[:2] for idx in
             sharding.addressable_devices_indices_map((rows,)).values()]
    return min(s for s, _ in spans), max(e for _, e in spans)


def global_batch(local: dict, sharding: jax.sharding.Sharding) -> dict:
    """Assembles the processes' batches (process p's rows p*L..(p+1)*L) into global arrays
    laid out by ``sharding``."""
    if jax.process_count() > 1:
        n = len(next(iter(local.values())))
        first, stop = _process_rows(sharding, n * jax.process_count())
        if stop - first == n and first != jax.process_index() * n:
            raise ValueError(f"process {jax.process_index()}'s devices hold rows "
                             f"[{first}, {stop}) of the global batch, not its slice "
                             f"[{jax.process_index() * n}, {(jax.process_index() + 1) * n}); "
                             "order the mesh's devices by process (state.make_mesh does)")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
