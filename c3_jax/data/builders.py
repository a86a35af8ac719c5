"""TFDS datasets (array_record, no TensorFlow) of precomputed embeddings, written as rows
arrive (constant memory), one shard per JAX process."""
from __future__ import annotations

import os
import shutil
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter
from jax.experimental import multihost_utils

from c3_jax import parallel
from c3_jax.progress import progress_bar

VERSION = "1.0.0"


def process_rows(n: int) -> slice:
    """This process's contiguous part of ``n`` rows (the first ``n % count`` processes get
    one more), so that the shards of all processes, in process order, are rows 0..n-1."""
    return rows_of(n, jax.process_index(), jax.process_count())


def rows_of(n: int, p: int, count: int) -> slice:
    """Process ``p``'s part of ``n`` rows split over ``count`` processes."""
    start = p * (n // count) + min(p, n % count)
    return slice(start, start + n // count + (p < n % count))


def fields_of(splits: Mapping[str, Mapping[str, np.ndarray]],
              captions: Optional[Mapping[str, Sequence]] = None) -> tuple:
    """``(fields, caption_shape)`` of ``PairsWriter`` for whole arrays and captions."""
    first = next(iter(splits.values()))
    fields = {k: (v.shape[1:], v.dtype) for k, v in first.items()}
    if not captions:
        return fields, None
    caption = next((c for cs in captions.values() for c in cs), "")
    return fields, (() if isinstance(caption, str) else (len(caption),))


def _storage_dtype(dtype) -> np.dtype:
    """Floating arrays are stored as float32 (embeddings need no more); others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if np.issubdtype(dtype, np.floating) else dtype


def _storage(a: np.ndarray) -> np.ndarray:
    return a.astype(_storage_dtype(a.dtype), copy=False)


def _features(fields: Mapping[str, tuple], caption_shape: Optional[tuple]):
    features = {k: tfds.features.Tensor(shape=tuple(shape), dtype=_storage_dtype(dtype))
                for k, (shape, dtype) in fields.items()}
    features["index"] = np.int64
    if caption_shape is not None:
        features["caption"] = (tfds.features.Text() if caption_shape == () else
                               tfds.features.Sequence(tfds.features.Text(),
                                                      length=caption_shape[0]))
    return tfds.features.FeaturesDict(features)


def _check_rows(split: str, arrays, captions, fields, caption_shape) -> int:
    """The number of rows in a batch of ``split``; ValueError when it does not fit the
    dataset's fields or holds NaN or Inf."""
    where = f"split {split!r}"
    if set(arrays) != set(fields):
        raise ValueError(f"{where}: fields {sorted(arrays)}, the dataset has {sorted(fields)}")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: arrays have different row counts {lengths}")
    n = next(iter(lengths.values()))
    for k, v in arrays.items():
        if tuple(v.shape[1:]) != tuple(fields[k][0]):
            raise ValueError(f"{where}: array {k!r} has rows of shape {v.shape[1:]}, "
                             f"the dataset {tuple(fields[k][0])}")
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise ValueError(f"{where}: array {k!r} contains NaN or Inf")
    if (captions is None) != (caption_shape is None):
        raise ValueError(f"{where}: captions given to a dataset without them, or missing")
    if captions is not None and len(captions) != n:
        raise ValueError(f"{where}: {len(captions)} captions for {n} rows")
    return n


class PairsWriter:
    """A TFDS dataset of rows (arrays of fixed shapes and optional captions) written as the
    rows arrive, so that memory does not grow with the dataset.

    ``sizes`` gives every split's row count; each JAX process writes one shard of each
    split, its part ``process_rows(n)``. ``write(split, first, arrays, captions)`` takes
    rows ``first, first + 1, ...`` of a split in any batch size and keeps those of this
    process's part, which must arrive in order; example i is row i (its ``index`` field
    too). ``fields`` maps each field to its row (shape, dtype); floating fields are stored
    as float32. ``caption_shape`` is None (no captions), () (one string per row) or (k,)
    (k strings per row). Shards go to ``incomplete.<version>``, renamed when every process
    has written its whole part, so that a failed build never looks complete. Use it as a
    context manager: leaving the block with an error, or with rows missing, fails on every
    process together."""

    def __init__(self, name: str, data_dir: str, sizes: Mapping[str, int],
                 fields: Mapping[str, tuple], caption_shape: Optional[tuple] = None,
                 overwrite: bool = False):
        check_new(data_dir, name, overwrite)
        if not sizes or min(sizes.values()) < 0:
            raise ValueError(f"dataset {name}: split sizes {dict(sizes)} must be >= 0")
        self.name, self.sizes = name, {s: int(n) for s, n in sizes.items()}
        self.final, tmp = (os.path.join(data_dir, name, v)
                           for v in (VERSION, "incomplete." + VERSION))
        self.features = _features(fields, caption_shape)
        self.fields, self.caption_shape = dict(fields), caption_shape
        self.parts = {s: process_rows(n) for s, n in self.sizes.items()}
        self.next = {s: part.start for s, part in self.parts.items()}
        self.written_bytes = 0
        if jax.process_index() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a build that died before its rename
            shutil.rmtree(self.final, ignore_errors=True)  # only there with ``overwrite``
            os.makedirs(tmp)
        parallel.barrier(f"dataset {name}: directory")
        self.template = tfds.core.ShardedFileTemplate(
            data_dir=tmp, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=name, filetype_suffix="array_record")
        self.writers = {s: ArrayRecordWriter(os.fspath(self._shard(s, jax.process_index())),
                                             "group_size:1") for s in sorted(self.sizes)}

    def _shard(self, split: str, p: int):
        return self.template.replace(split=split).sharded_filepath(
            shard_index=p, num_shards=jax.process_count())

    def write(self, split: str, first: int, arrays: Mapping[str, np.ndarray],
              captions: Optional[Sequence] = None) -> None:
        """Rows ``first...`` of ``split``: ``arrays`` {field: [rows, ...]} and their
        captions; the rows outside this process's part are skipped."""
        n = _check_rows(split, arrays, captions, self.fields, self.caption_shape)
        part = self.parts[split]
        lo, hi = max(first, part.start), min(first + n, part.stop)
        if lo >= hi:
            return
        if lo != self.next[split]:
            raise ValueError(f"dataset {self.name}/{split}: rows must arrive in order; "
                             f"expected row {self.next[split]}, got {lo}")
        writer = self.writers[split]
        for i in range(lo - first, hi - first):
            example = {k: _storage(np.asarray(v[i])) for k, v in arrays.items()}
            example["index"] = first + i
            if captions is not None:
                example["caption"] = captions[i]
            record = self.features.serialize_example(example)
            writer.write(record)
            self.written_bytes += len(record)
        self.next[split] = hi

    def __enter__(self) -> "PairsWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        for writer in self.writers.values():
            writer.close()
        missing = {s: (self.next[s], part.stop) for s, part in self.parts.items()
                   if self.next[s] != part.stop}
        ok = kind is None and not missing
        if not _everyone(ok):
            if kind is None:
                raise ValueError(f"dataset {self.name}: " + (
                    f"rows [from, to) not written: {missing}" if missing else
                    "another process failed"))
            return  # this process's own error propagates
        p, count = jax.process_index(), jax.process_count()
        for s, part in sorted(self.parts.items()) if count > 1 else ():
            logging.info("process %d of %d wrote rows %d..%d of %s/%s", p, count, part.start,
                         part.stop, self.name, s)
        parallel.barrier(f"dataset {self.name}: shards")
        if p == 0:
            self._write_info()
            os.rename(self.template.data_dir, self.final)
        parallel.barrier(f"dataset {self.name}: done")

    def _write_info(self) -> None:
        """dataset_info.json and features.json of the shards."""
        count, infos = jax.process_count(), []
        for s in sorted(self.sizes):
            parts = [rows_of(self.sizes[s], p, count) for p in range(count)]
            infos.append(tfds.core.SplitInfo(
                name=s, shard_lengths=[part.stop - part.start for part in parts],
                num_bytes=sum(os.path.getsize(self._shard(s, p)) for p in range(count)),
                filename_template=self.template.replace(split=s)))
        tfds.folder_dataset.write_metadata(
            data_dir=self.template.data_dir, features=self.features, split_infos=infos,
            version=VERSION, filename_template=self.template, check_data=False,
            disable_shuffling=True)


def build_pairs_dataset(name: str, data_dir: str,
                        splits: Mapping[str, Mapping[str, np.ndarray]],
                        captions: Optional[Mapping[str, Sequence]] = None,
                        overwrite: bool = False) -> str:
    """Writes ``splits`` ({split: {field: [n, ...] array}}) as TFDS dataset ``name``, with
    ``PairsWriter``: every JAX process calls it with the same arrays and writes its part.
    Example i is row i; a row's caption is one string or a fixed-length list of strings.
    Every array is checked before anything is written. Returns the dataset directory,
    readable with ``tfds.builder_from_directory``."""
    if not splits:
        raise ValueError("no splits given")
    if captions is not None and set(captions) != set(splits):
        raise ValueError(f"captions are given for splits {sorted(captions)}, the arrays for "
                         f"{sorted(splits)}")
    fields, caption_shape = fields_of(splits, captions)
    sizes = {s: len(next(iter(a.values()))) for s, a in splits.items()}
    rows = {s: (splits[s], None if captions is None else captions[s]) for s in sorted(splits)}
    for s, (arrays, texts) in rows.items():
        _check_rows(s, arrays, texts, fields, caption_shape)
    with PairsWriter(name, data_dir, sizes, fields, caption_shape, overwrite) as writer:
        for s, (arrays, texts) in rows.items():
            writer.write(s, 0, arrays, texts)
    return writer.final


def _everyone(ok: bool) -> bool:
    """Whether ``ok`` holds on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).all())


def check_new(data_dir: str, name: str, overwrite: bool) -> None:
    """Refuses to build dataset ``name`` over an existing one unless ``overwrite``."""
    final = os.path.join(data_dir, name, VERSION)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"dataset {name!r} already exists at {final}; choose another "
                              "--config.name or pass --config.overwrite=True to replace it")


def load_npz_splits(path: str) -> dict:
    """{split: {field: array}} from an .npz whose keys are ``<split>/<field>``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    with np.load(path) as data:
        out: dict = {}
        for key in data.files:
            if "/" not in key:
                raise ValueError(f"{path}: key {key!r} is not '<split>/<field>'")
            split, field = key.split("/", 1)
            out.setdefault(split, {})[field] = data[key]
    return out


def data_source(dataset_dir: str, split: str):
    """Random-access source of one split of a dataset written by this module."""
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset directory {dataset_dir} does not exist")
    builder = tfds.builder_from_directory(dataset_dir)
    if split not in builder.info.splits:
        raise KeyError(f"{dataset_dir} has no split {split!r}; it has {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


class InMemory:
    """Every row of a (small) data source, decoded once and kept: random access at list
    speed for a split that a run reads many times over (a 20,000-image world split is
    ~80 MB; decoding its records on every read is most of a small model's step)."""

    def __init__(self, source, chunk: int = 1024):
        self.source, self.rows = source, []
        starts = range(0, len(source), chunk)
        for start in progress_bar(starts, desc="read split", unit="chunk", leave=False):
            keys = list(range(start, min(start + chunk, len(source))))
            self.rows += (source.__getitems__(keys) if hasattr(source, "__getitems__")
                          else [source[k] for k in keys])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def __repr__(self) -> str:  # the rows are the source's: the same identity for grain
        return repr(self.source)
