"""TFDS datasets (array_record, no TensorFlow) of precomputed embeddings, written as rows
arrive (constant memory), one shard per JAX process."""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
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
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")  # what TFDS's file templates can parse
STORABLE_KINDS = "fiu"  # float, int, uint arrays (not bool, object, strings)


def process_rows(n: int) -> slice:
    """This process's contiguous part of ``n`` rows (the first ``n % count`` processes get
    one more), so that the shards of all processes, in process order, are rows 0..n-1."""
    return rows_of(n, jax.process_index(), jax.process_count())


def rows_of(n: int, p: int, count: int) -> slice:
    """Process ``p``'s part of ``n`` rows split over ``count`` processes."""
    start = p * (n // count) + min(p, n % count)
    return slice(start, start + n // count + (p < n % count))


def check_name(name, what: str = "dataset name", field: str = "--config.name") -> None:
    """A dataset or split name TFDS can write and read back: letters, digits and '_',
    starting with a letter (no spaces, dots, dashes or path separators)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"{field}: {what} {name!r} is not allowed; use letters, digits and "
                         "'_', starting with a letter (e.g. 'paired_embeddings')")


def caption_shape_of(caption, where: str) -> tuple:
    """() for one string per row, (k,) for k strings per row, from a row's caption."""
    if isinstance(caption, str):
        return ()
    if isinstance(caption, (list, tuple)) and caption:
        return (len(caption),)
    raise ValueError(f"{where}: a caption is {_shown(caption)}; give each row one string or a "
                     "non-empty list of strings")


def fields_of(splits: Mapping[str, Mapping[str, np.ndarray]],
              captions: Optional[Mapping[str, Sequence]] = None) -> tuple:
    """``(fields, caption_shape)`` of ``PairsWriter`` for whole arrays and captions."""
    first = next(iter(splits.values()))
    fields = {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in first.items()}
    if not captions:
        return fields, None
    rows = [(s, cs) for s, cs in captions.items() if isinstance(cs, (list, tuple)) and cs]
    if not rows:
        return fields, ()
    return fields, caption_shape_of(rows[0][1][0], f"split {rows[0][0]!r}, caption 0")


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def check_captions(split: str, captions, caption_shape: tuple, allow_empty: bool = True) -> None:
    """Each caption of ``split`` is a string (``caption_shape`` ()) or a list of exactly k
    strings ((k,)); ValueError naming the first that is not (or is empty, unless
    ``allow_empty``)."""
    if isinstance(captions, (str, bytes)) or not isinstance(captions, (list, tuple)):
        raise ValueError(f"split {split!r}: captions must be a list, one entry per row; got "
                         f"{_shown(captions)}")
    for i, c in enumerate(captions):
        where = f"split {split!r}, caption {i}"
        items = [c] if caption_shape == () else c
        if caption_shape == () and not isinstance(c, str):
            raise ValueError(f"{where} is {_shown(c)}; every row of this dataset has one string "
                             "(as row 0 does)")
        if caption_shape != () and (not isinstance(c, (list, tuple)) or
                                    len(c) != caption_shape[0]):
            raise ValueError(f"{where} is {_shown(c)}; every row must have a list of "
                             f"{caption_shape[0]} strings (as row 0 does)")
        for text in items:
            if not isinstance(text, str):
                raise ValueError(f"{where} holds {_shown(text)}; captions must be strings")
            if not allow_empty and not text.strip():
                raise ValueError(f"{where} is empty; give every row real text")


def _storage_dtype(dtype) -> np.dtype:
    """Floating arrays are stored as float32 (embeddings need no more); others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if np.issubdtype(dtype, np.floating) else dtype


def _storage(a: np.ndarray) -> np.ndarray:
    return a.astype(_storage_dtype(a.dtype), copy=False)


def encoding_of(shape: tuple) -> "tfds.features.Encoding":
    """How a field with rows of ``shape`` is stored: rows with at least one dimension
    (images, embeddings, id lists) as their raw bytes, per-row scalars as plain values.

    Raw bytes are one copy each way, whatever the dtype: a 256-px uint8 image serializes
    in ~0.1 ms instead of ~20 ms as a list of 196,608 int64 varints, and a 5 x 512 float32
    embedding ~30x faster at the same size. A scalar stays a value so that it reads back
    as a Python number, not a 0-d array. Readers decode each dataset with the spec saved
    beside it (features.json), so datasets written with every field as values still read
    back the same arrays; raw-byte arrays read back read-only."""
    return tfds.features.Encoding.BYTES if len(shape) else tfds.features.Encoding.NONE


def features_of(fields: Mapping[str, tuple], caption_shape: Optional[tuple]):
    """The TFDS features of rows of ``fields`` ({field: (shape, dtype)}), their ``index``
    and, unless ``caption_shape`` is None, their captions."""
    features = {k: tfds.features.Tensor(shape=tuple(shape), dtype=_storage_dtype(dtype),
                                        encoding=encoding_of(tuple(shape)))
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
    for k, v in arrays.items():
        if np.ndim(v) < 1 or np.asarray(v).dtype.kind not in STORABLE_KINDS:
            raise ValueError(f"{where}: array {k!r} is {np.asarray(v).dtype} of shape "
                             f"{np.shape(v)}; give float (embeddings) or integer arrays with "
                             "one row per example")
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
    if captions is not None:
        check_captions(split, captions, caption_shape)
        if len(captions) != n:
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
    has written its whole part and the dataset reads back, so that a failed build never
    looks complete; with ``overwrite`` the old dataset is swapped out only then, and a
    failed build leaves it as it was. Use it as a context manager: leaving the block with an
    error, or with rows missing, fails on every process together."""

    def __init__(self, name: str, data_dir: str, sizes: Mapping[str, int],
                 fields: Mapping[str, tuple], caption_shape: Optional[tuple] = None,
                 overwrite: bool = False):
        check_new(data_dir, name, overwrite)
        if not sizes or min(sizes.values()) < 0:
            raise ValueError(f"dataset {name}: split sizes {dict(sizes)} must be >= 0")
        for split in sizes:
            check_name(split, "split name", f"dataset {name}")
        self.name, self.sizes = name, {s: int(n) for s, n in sizes.items()}
        self.root = os.path.join(data_dir, name)
        self.final, tmp = (os.path.join(self.root, v) for v in (VERSION, "incomplete." + VERSION))
        self.new_root = not os.path.exists(self.root)
        self.features = features_of(fields, caption_shape)
        self.fields, self.caption_shape = dict(fields), caption_shape
        self.parts = {s: process_rows(n) for s, n in self.sizes.items()}
        self.next = {s: part.start for s, part in self.parts.items()}
        self.written_bytes = 0
        if jax.process_index() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a build that died before its rename
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
            if jax.process_index() == 0:  # every writer is closed (``_everyone`` waited)
                self._discard()
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
            try:
                self._write_info()
                self._check_readable()
            except BaseException:
                self._discard()
                raise
            swap_in(self.template.data_dir, self.final)
        parallel.barrier(f"dataset {self.name}: done")

    def _discard(self) -> None:
        """Removes the unfinished build (and the dataset's folder if this build made it)."""
        shutil.rmtree(self.template.data_dir, ignore_errors=True)
        if self.new_root and os.path.isdir(self.root) and not os.listdir(self.root):
            os.rmdir(self.root)

    def _check_readable(self) -> None:
        """The finished shards read back through TFDS with every split's row count."""
        splits = tfds.builder_from_directory(self.template.data_dir).info.splits
        counts = {s: splits[s].num_examples for s in splits}
        if counts != self.sizes:
            raise ValueError(f"dataset {self.name}: wrote {counts} rows, expected {self.sizes}")

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
    check_name(name)
    if not splits:
        raise ValueError("no splits given")
    if captions is not None and set(captions) != set(splits):
        raise ValueError(f"captions are given for splits {sorted(captions)}, the arrays for "
                         f"{sorted(splits)}")
    for s, arrays in splits.items():
        check_name(s, "split name", f"dataset {name}")
        if not arrays:
            raise ValueError(f"split {s!r} has no arrays")
    fields, caption_shape = fields_of(splits, captions)
    rows = {s: (splits[s], None if captions is None else captions[s]) for s in sorted(splits)}
    sizes = {s: _check_rows(s, arrays, texts, fields, caption_shape)
             for s, (arrays, texts) in rows.items()}
    for s, n in sizes.items():
        if n == 0:
            raise ValueError(f"split {s!r} has no rows; leave it out or give it rows")
        if captions is not None:
            check_captions(s, captions[s], caption_shape, allow_empty=False)
    with PairsWriter(name, data_dir, sizes, fields, caption_shape, overwrite) as writer:
        for s, (arrays, texts) in rows.items():
            writer.write(s, 0, arrays, texts)
    return writer.final


def _everyone(ok: bool) -> bool:
    """Whether ``ok`` holds on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).all())


def swap_in(new: str, final: str) -> None:
    """Renames the complete dataset ``new`` to ``final``; an old one there is moved aside
    first and removed only after (``restore_replaced`` undoes a swap cut in between)."""
    old = os.path.join(os.path.dirname(final), "replaced." + os.path.basename(final))
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced(final: str) -> None:
    """Puts back an old dataset that a swap cut between its two renames left aside."""
    old = os.path.join(os.path.dirname(final), "replaced." + os.path.basename(final))
    if os.path.isdir(old) and not os.path.exists(final):
        os.rename(old, final)


def check_new(data_dir: str, name: str, overwrite: bool) -> None:
    """Refuses a bad dataset name, a ``data_dir`` that is a file, a folder of that name
    holding anything but our dataset versions, and an existing dataset unless ``overwrite``
    (only a complete one, with its dataset_info.json, is replaced)."""
    check_name(name)
    if not data_dir:
        raise ValueError("--config.data_dir is empty; give the directory that holds datasets")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"--config.data_dir {data_dir} is a file; give a directory")
    root = os.path.join(data_dir, name)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"{root} is a file, not a dataset; choose another --config.name")
    version = re.compile(r"(incomplete\.|replaced\.)?\d+\.\d+\.\d+\Z")
    foreign = sorted(e for e in os.listdir(root) if not version.match(e)) \
        if os.path.isdir(root) else []
    if foreign:
        raise ValueError(f"{root} holds {', '.join(foreign[:3])}, which are not versions of a "
                         "dataset of ours; choose another --config.name (nothing was changed)")
    final = os.path.join(root, VERSION)
    restore_replaced(final)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"dataset {name!r} already exists at {final}; choose another "
                              "--config.name or pass --config.overwrite=True to replace it")
    if os.path.exists(final) and not os.path.isfile(os.path.join(final, "dataset_info.json")):
        raise ValueError(f"{final} is not a complete dataset (no dataset_info.json), so "
                         "overwrite does not replace it; remove it yourself or choose another "
                         "--config.name")


def npz_headers(path: str, field: str = "embeddings") -> dict:
    """{key: (shape, dtype)} of the arrays of an .npz, read from their headers only;
    ValueError naming ``path`` (and the config ``field``) when it is missing, a directory,
    not an .npz, truncated or holds object arrays."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config.{field}: {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--config.{field}: {path} is a directory; give an .npz file")
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if major == 1
                                       else np.lib.format.read_array_header_2_0(f))
                out[info.filename[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise ValueError(f"--config.{field}: {path} is not a readable .npz ({err}); write it "
                         "again with numpy.savez") from None
    if not out:
        raise ValueError(f"--config.{field}: {path} holds no arrays")
    for key, (shape, dtype) in out.items():
        if dtype.kind not in STORABLE_KINDS:
            raise ValueError(f"--config.{field}: array {key!r} of {path} is {dtype}; give float "
                             "(embeddings) or integer arrays")
    return out


def check_npz_splits(path: str) -> dict:
    """{split: {field: (shape, dtype)}} of an .npz keyed ``<split>/<field>``, checked from
    the headers (key names, split names, one row count per split) before any work."""
    out: dict = {}
    for key, (shape, dtype) in npz_headers(path).items():
        if key.count("/") != 1 or not all(key.split("/")):
            raise ValueError(f"--config.embeddings: key {key!r} of {path} is not "
                             "'<split>/<field>'; save the arrays as e.g. 'train/text_embedding'")
        split, field = key.split("/")
        check_name(split, "split name", f"--config.embeddings ({path})")
        if len(shape) < 1:
            raise ValueError(f"--config.embeddings: array {key!r} of {path} is a scalar; give "
                             "one row per example")
        out.setdefault(split, {})[field] = (shape, dtype)
    for split, fields in out.items():
        rows = {f: s[0] for f, (s, _) in fields.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"--config.embeddings: split {split!r} of {path} has arrays of "
                             f"different row counts {rows}")
        if not next(iter(rows.values())):
            raise ValueError(f"--config.embeddings: split {split!r} of {path} has no rows")
    return out


def load_npz_splits(path: str) -> dict:
    """{split: {field: array}} from an .npz whose keys are ``<split>/<field>`` (checked by
    ``check_npz_splits`` first)."""
    check_npz_splits(path)
    out: dict = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            split, field = key.split("/", 1)
            out.setdefault(split, {})[field] = data[key]
    return out


def load_captions_json(path: str, splits: Mapping[str, int], field: str = "captions") -> dict:
    """{split: [captions]} of a UTF-8 JSON file, checked against ``splits`` ({split: rows}):
    every split present, one entry per row, each a non-empty string or a list of k."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config.{field}: {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--config.{field}: {path} is a directory; give a JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"--config.{field}: {path} is not UTF-8 text ({err.reason} at byte "
                         f"{err.start}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--config.{field}: {path} is not valid JSON ({err.msg} at line "
                         f"{err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config.{field}: {path} holds {_shown(data)}; it must be a JSON "
                         "object {split: [caption or [captions], ...]}")
    missing = sorted(set(splits) - set(data))
    if missing:
        raise ValueError(f"--config.{field}: {path} has no captions for split(s) {missing}")
    data = {s: data[s] for s in splits}
    shape = fields_of({"_": {}}, data)[1]
    for s, n in splits.items():
        try:
            check_captions(s, data[s], shape, allow_empty=False)
        except ValueError as err:
            raise ValueError(f"--config.{field}: {path}: {err}") from None
        if len(data[s]) != n:
            raise ValueError(f"--config.{field}: {path}: split {s!r} has {len(data[s])} "
                             f"captions for {n} rows of embeddings")
    return data


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
