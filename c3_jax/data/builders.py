"""TFDS datasets (array_record, no TensorFlow) of precomputed embeddings."""
from __future__ import annotations

import os
import types
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds


class _ArrayPairs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Rows of named arrays (embeddings, ids) plus optional captions, one example per row.

    A row's caption is one string, or a fixed-length list of strings (e.g. an image's
    5 reference captions)."""
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, splits: Mapping[str, Mapping[str, np.ndarray]],
                 captions: Optional[Mapping[str, Sequence[str]]], **kwargs):
        self._splits, self._captions = splits, captions or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        first = next(iter(self._splits.values()))
        features = {k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype)
                    for k, v in first.items()}
        features["index"] = np.int64
        if self._captions:
            first_caption = next(iter(self._captions.values()))[0]
            features["caption"] = (tfds.features.Text() if isinstance(first_caption, str) else
                                   tfds.features.Sequence(tfds.features.Text(),
                                                          length=len(first_caption)))
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
        arrays, captions = self._splits[split], self._captions.get(split)
        for i in range(len(next(iter(arrays.values())))):
            example = {k: v[i] for k, v in arrays.items()}
            example["index"] = i
            if captions is not None:
                example["caption"] = captions[i]
            yield i, example


def _check_splits(splits, captions):
    if not splits:
        raise ValueError("no splits given")
    for split, arrays in splits.items():
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"split {split!r}: arrays have different row counts {lengths}")
        for k, v in arrays.items():
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                raise ValueError(f"split {split!r}: array {k!r} contains NaN or Inf")
        if captions is not None and len(captions.get(split, ())) != next(iter(lengths.values())):
            raise ValueError(f"split {split!r}: {len(captions.get(split, ()))} captions for "
                             f"{next(iter(lengths.values()))} rows")


def _storage(a: np.ndarray) -> np.ndarray:
    """Floating arrays are stored as float32 (embeddings need no more); others as they are."""
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def build_pairs_dataset(name: str, data_dir: str,
                        splits: Mapping[str, Mapping[str, np.ndarray]],
                        captions: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """Writes ``splits`` ({split: {field: [n, ...] array}}) as TFDS dataset ``name``.

    Rows keep their order (example i is row i); floating arrays are stored as float32. TFDS writes into an ``incomplete.*``
    directory and renames it when done, so a failed build never looks complete.
    Returns the dataset directory, readable with ``tfds.builder_from_directory``.
    """
    _check_splits(splits, captions)
    splits = {s: {k: _storage(np.asarray(v)) for k, v in arrays.items()}
              for s, arrays in splits.items()}
    cls = types.new_class(name, (_ArrayPairs,), {"skip_registration": True},
                          lambda ns: ns.update(name=name))
    builder = cls(splits=splits, captions=captions, data_dir=data_dir,
                  file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=data_dir))
    return str(builder.data_dir)


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
