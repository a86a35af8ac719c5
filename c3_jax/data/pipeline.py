"""grain input pipeline: one seeded global order for every process count, each process
loading its slice of every global batch, and iterator positions that any process count
can resume from. A source that fits in ``in_memory_bytes`` is read once into arrays and
its batches gathered by index (the same batches as grain's, without per-record work)."""
from __future__ import annotations

import json
import sys
from typing import Callable, Optional, Sequence

import grain.python as grain
import jax
import numpy as np
from grain.experimental import index_shuffle

_STATE_VERSION = 1
# Sources up to this size are read into memory once (make_loader's in_memory_bytes).
IN_MEMORY_BYTES = 2 << 30


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
                 transform: Optional[Callable], drop_remainder: bool,
                 columns: Optional[dict] = None):
        self.source, self.global_batch = source, global_batch
        self.shard_index, self.shard_count = shard_index, shard_count
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.transform, self.drop_remainder = transform, drop_remainder
        self.columns = columns  # every record, read once (None: grain reads each batch)

    def batches(self, start: int = 0):
        """This process's batches from global batch ``start`` on: gathered from
        ``columns`` when the source was read into memory, else read by grain."""
        if self.columns is None:
            return iter(self.grain_loader(start))
        return self.gathered(start)

    def gathered(self, start: int):
        """``grain_loader(start)``'s batches, gathered by record key from ``columns``."""
        n, local = len(self.source), self.global_batch // self.shard_count
        total = None if self.num_epochs is None else n * self.num_epochs
        batch = start
        while True:
            first = batch * self.global_batch + self.shard_index * local
            stop = first + local
            if total is not None:
                if self.drop_remainder and (batch + 1) * self.global_batch > total:
                    return
                stop = min(stop, total)
                if stop <= first:
                    return
            keys = record_keys(n, np.arange(first, stop), self.seed, self.shuffle)
            yield {k: gather(c, keys) for k, c in self.columns.items()}
            batch += 1

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
        self._it = loader.batches(0)

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
        self._it = self._loader.batches(self._batches)

    def get_state(self) -> bytes:
        return json.dumps(self.position()).encode()

    def set_state(self, state: bytes) -> None:
        self.set_position(json.loads(state.decode() if isinstance(state, bytes) else state))

    def start_prefetch(self) -> None:
        """Nothing to start: batches are read in this process (grain ``worker_count=0``)."""


def make_loader(source: Sequence, batch_size: int, seed: int, *, shuffle: bool = True,
                num_epochs: Optional[int] = None, shard_index: Optional[int] = None,
                shard_count: Optional[int] = None, transform: Optional[Callable] = None,
                drop_remainder: bool = True, in_memory_bytes: int = IN_MEMORY_BYTES,
                columns: Optional[dict] = None) -> GlobalBatchLoader:
    """A deterministic grain loader of this process's ``batch_size`` rows of each global batch.

    The global batch is ``batch_size * shard_count`` records of one order that depends
    only on ``seed`` (not on the process count); shard ``p`` (by default the JAX process
    index, of ``jax.process_count()``) gets its rows ``[p*batch_size, (p+1)*batch_size)``,
    which ``global_batch`` places there. ``transform`` maps one example (e.g. tokenize
    and pad a caption) before batching. ``iter(loader).get_state()`` / ``set_state``
    checkpoint the position, also across process counts. A source whose records take at
    most ``in_memory_bytes`` (0: none) is read once here (``read_columns``; ``transform``
    then maps each record once, so it must be a function of the record alone) and its
    batches are gathered by index; larger ones stream through grain. Both give the same
    batches and positions. ``columns``: the source's records already read by
    ``read_columns`` (loaders of one source share them).
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
    if columns is None and in_memory_bytes > 0:
        columns = read_columns(source, in_memory_bytes, transform)
    return GlobalBatchLoader(source, batch_size * shard_count, shard_index, shard_count, seed,
                             shuffle, num_epochs, transform, drop_remainder, columns)


def record_keys(num_records: int, positions: np.ndarray, seed: int, shuffle: bool) -> np.ndarray:
    """The record keys at ``positions`` of grain's single-process ``IndexSampler`` order
    (epoch ``e`` is a permutation of the records by ``index_shuffle`` with seed + e)."""
    epochs, within = np.divmod(np.asarray(positions, np.int64), num_records)
    if not shuffle:
        return within
    return np.fromiter((index_shuffle(int(i), max_index=num_records - 1,
                                      seed=(seed + int(e)) % 2 ** 32, rounds=4)
                        for e, i in zip(epochs, within)), np.int64, len(within))


def gather(column: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rows ``keys`` of a column as grain's ``Batch`` stacks them (strings at the batch's
    own width)."""
    if column.dtype == object:
        return np.stack(list(column[keys]))
    return column[keys]


def record_bytes(record: dict) -> int:
    """The bytes one record's fields take as arrays."""
    return sum(np.asarray(v).nbytes for v in record.values())


def read_columns(source: Sequence, max_bytes: int, transform: Optional[Callable] = None,
                 chunk: int = 1024) -> Optional[dict]:
    """Every record of ``source`` (mapped by ``transform``) as {field: array [n, ...]}, or
    None when they would take more than ``max_bytes`` (judged by the first record) or do
    not stack (ragged fields). A source whose ``columns()`` is not None gives them itself;
    strings are kept as objects (``gather`` stacks them)."""
    first = source[0] if transform is None else transform(source[0])
    if (not isinstance(first, dict) or record_bytes(first) * len(source) > max_bytes
            or any(isinstance(v, (list, tuple, dict)) for v in first.values())):
        return None  # nested fields: grain batches them as trees
    own = source.columns() if transform is None and hasattr(source, "columns") else None
    if own is not None:
        return own
    records = []
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        rows = (source.__getitems__(keys) if hasattr(source, "__getitems__")
                else [source[k] for k in keys])
        records += rows if transform is None else [transform(r) for r in rows]
    columns = {}
    for field in first:
        values = [np.asarray(r[field]) for r in records]
        if any(v.shape != values[0].shape for v in values):
            return None
        if values[0].dtype.kind in "SUO":
            column = np.empty(len(values), object)
            for i, v in enumerate(values):
                column[i] = v
        else:
            column = np.stack(values)
        columns[field] = column
    return columns


class MemberBatches:
    """Batches [members, batch, ...] of a sweep: member i reads ``sources[i]`` in the order
    of ``seeds[i]``; members with the same stream key (``keys[i]``, e.g. 'seed/field') share
    one stream. Every process reads the whole batch and ``place(array)`` puts it on the
    devices; the position (every stream's) is what a checkpoint saves."""

    def __init__(self, keys: Sequence[str], sources: Sequence, seeds: Sequence[int],
                 batch_size: int, fields: Sequence[str], place: Callable):
        self.keys, self.fields, self.place = list(keys), tuple(fields), place
        self.streams, read = {}, {}  # read: each source's columns, read once
        for key, source, seed in zip(keys, sources, seeds):
            if key not in self.streams:
                if id(source) not in read:
                    read[id(source)] = read_columns(source, IN_MEMORY_BYTES)
                self.streams[key] = iter(make_loader(source, batch_size, int(seed),
                                                     shard_index=0, shard_count=1,
                                                     in_memory_bytes=0,
                                                     columns=read[id(source)]))

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
