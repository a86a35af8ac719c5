"""TFDS datasets (array_record, no TensorFlow) of precomputed embeddings, written as one
shard per JAX process."""
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

VERSION = "1.0.0"


def process_rows(n: int) -> slice:
    """This process's contiguous part of ``n`` rows (the first ``n % count`` processes get
    one more), so that the shards of all processes, in process order, are rows 0..n-1."""
    p, count = jax.process_index(), jax.process_count()
    start = p * (n // count) + min(p, n % count)
    return slice(start, start + n // count + (p < n % count))


def _features(splits, captions) -> tfds.features.FeaturesDict:
    first = next(iter(splits.values()))
    features = {k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype)
                for k, v in first.items()}
    features["index"] = np.int64
    if captions:
        first_caption = next(c for cs in captions.values() for c in cs)
        features["caption"] = (tfds.features.Text() if isinstance(first_caption, str) else
                               tfds.features.Sequence(tfds.features.Text(),
                                                      length=len(first_caption)))
    return tfds.features.FeaturesDict(features)


def _check_splits(splits, captions) -> Optional[str]:
    """What is wrong with ``splits``/``captions``, or None."""
    if not splits:
        return "no splits given"
    for split, arrays in splits.items():
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            return f"split {split!r}: arrays have different row counts {lengths}"
        for k, v in arrays.items():
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                return f"split {split!r}: array {k!r} contains NaN or Inf"
        if captions is not None and len(captions.get(split, ())) != next(iter(lengths.values())):
            return (f"split {split!r}: {len(captions.get(split, ()))} captions for "
                    f"{next(iter(lengths.values()))} rows")
    return None


def _storage(a: np.ndarray) -> np.ndarray:
    """Floating arrays are stored as float32 (embeddings need no more); others as they are."""
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def _my_part(splits, captions, local_rows: bool) -> tuple:
    """This process's rows of ``splits`` (as stored) and ``captions``: all of them with
    ``local_rows``, else its part ``process_rows(n)``."""
    mine = {s: slice(None) if local_rows else process_rows(len(next(iter(a.values()))))
            for s, a in splits.items()}
    arrays = {s: {k: _storage(np.asarray(v[mine[s]])) for k, v in a.items()}
              for s, a in splits.items()}
    return arrays, captions and {s: captions[s][mine[s]] for s in splits}


def _all_rows(ok: bool, rows: Sequence[int]) -> np.ndarray:
    """[processes, 1 + len(rows)]: every process's ``ok`` flag and row counts."""
    mine = np.asarray([int(ok), *rows], np.int64)
    if jax.process_count() == 1:
        return mine[None]
    return np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)


def _write_shard(path: str, features, arrays: Mapping[str, np.ndarray],
                 captions: Optional[Sequence], start: int) -> None:
    """Rows of ``arrays`` as one array_record shard; row i is example ``start + i``."""
    writer = ArrayRecordWriter(path, "group_size:1")
    for i in range(len(next(iter(arrays.values())))):
        example = {k: v[i] for k, v in arrays.items()}
        example["index"] = start + i
        if captions is not None:
            example["caption"] = captions[i]
        writer.write(features.serialize_example(example))
    writer.close()


def build_pairs_dataset(name: str, data_dir: str,
                        splits: Mapping[str, Mapping[str, np.ndarray]],
                        captions: Optional[Mapping[str, Sequence]] = None,
                        local_rows: bool = False, overwrite: bool = False) -> str:
    """Writes ``splits`` ({split: {field: [n, ...] array}}) as TFDS dataset ``name``.

    Every JAX process calls it and writes one shard of each split: its part
    ``process_rows(n)`` of the rows, or with ``local_rows`` all the rows it was given
    (its part of the dataset, in process order, e.g. the rows it encoded). Example i is
    row i (its ``index`` field too); floating arrays are stored as float32; a row's
    caption is one string or a fixed-length list of strings. Shards go to
    ``incomplete.<version>``, renamed once all are written, so a failed build never looks
    complete. A complete dataset of that name is replaced only with ``overwrite`` (else
    FileExistsError, before anything is written). Returns the dataset directory,
    readable with ``tfds.builder_from_directory``.
    """
    error = _check_splits(splits, captions)
    final, tmp = (os.path.join(data_dir, name, v) for v in (VERSION, "incomplete." + VERSION))
    names = sorted(splits) if error is None else []
    if error is None:
        splits, captions = _my_part(splits, captions, local_rows)
    rows = _all_rows(error is None, [len(next(iter(splits[s].values()))) for s in names])
    if error is not None or not rows[:, 0].all():
        raise ValueError(error or f"dataset {name}: another process found bad input")
    check_new(data_dir, name, overwrite)
    primary, p, count = jax.process_index() == 0, jax.process_index(), jax.process_count()
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)  # a build that died before its rename
        shutil.rmtree(final, ignore_errors=True)  # only there with ``overwrite``
        os.makedirs(tmp)
    parallel.barrier(f"dataset {name}: directory")
    features = _features(splits, captions)
    template = tfds.core.ShardedFileTemplate(
        data_dir=tmp, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, filetype_suffix="array_record")
    for j, s in enumerate(names):
        path = template.replace(split=s).sharded_filepath(shard_index=p, num_shards=count)
        start = int(rows[:p, 1 + j].sum())
        _write_shard(os.fspath(path), features, splits[s],
                     captions.get(s) if captions else None, start)
        if count > 1:
            logging.info("process %d of %d wrote rows %d..%d of %s/%s", p, count, start,
                         start + rows[p, 1 + j], name, s)
    parallel.barrier(f"dataset {name}: shards")
    if primary:
        _write_info(template, features, names, rows[:, 1:])
        os.rename(tmp, final)
    parallel.barrier(f"dataset {name}: done")
    return final


def check_new(data_dir: str, name: str, overwrite: bool) -> None:
    """Refuses to build dataset ``name`` over an existing one unless ``overwrite``."""
    final = os.path.join(data_dir, name, VERSION)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"dataset {name!r} already exists at {final}; choose another "
                              "--config.name or pass --config.overwrite=True to replace it")


def _write_info(template, features, names: Sequence[str], rows: np.ndarray) -> None:
    """dataset_info.json and features.json of the shards in ``template.data_dir``."""
    infos = []
    for j, s in enumerate(names):
        paths = template.replace(split=s).sharded_filepaths(num_shards=len(rows))
        infos.append(tfds.core.SplitInfo(
            name=s, shard_lengths=[int(n) for n in rows[:, j]],
            num_bytes=sum(os.path.getsize(p) for p in paths),
            filename_template=template.replace(split=s)))
    tfds.folder_dataset.write_metadata(
        data_dir=template.data_dir, features=features, split_infos=infos, version=VERSION,
        filename_template=template, check_data=False, disable_shuffling=True)


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
