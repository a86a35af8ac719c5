"""Config-driven dataset building: precomputed embeddings (any space) -> TFDS dataset."""
from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

from c3_jax.data import builders
from c3_jax.workdir import Workdir

FIELDS = {"embeddings_dataset": {"embeddings": str, "captions": str, "name": str,
                                 "data_dir": str},
          "coco_extract": {"clip": str, "annotations": str, "image_root": str, "name": str,
                           "data_dir": str, "captions_per_image": int, "batch_size": int,
                           "image_size": int}}


def run_embeddings_dataset(config, wd: Workdir) -> dict:
    """Writes the arrays of an .npz keyed '<split>/<field>' (plus optional captions) as TFDS."""
    splits = builders.load_npz_splits(config.embeddings)
    captions = None
    if config.captions:
        if not os.path.exists(config.captions):
            raise FileNotFoundError(f"captions file {config.captions} does not exist")
        with open(config.captions) as f:
            captions = json.load(f)
        missing = sorted(set(splits) - set(captions))
        if missing:
            raise ValueError(f"{config.captions} has no captions for split(s) {missing}")
    path = builders.build_pairs_dataset(config.name, config.data_dir, splits, captions)
    return {"dataset_dir": path,
            "splits": {s: len(next(iter(a.values()))) for s, a in splits.items()},
            "fields": {s: {k: list(v.shape[1:]) for k, v in a.items()} for s, a in splits.items()}}


def run_coco_extract(config, wd: Workdir) -> dict:
    """CLIP image and caption embeddings of MS-COCO (Karpathy split) as a TFDS dataset."""
    from c3_jax import embed
    del wd
    path = embed.extract_coco(config.clip, config.annotations, config.image_root,
                              config.data_dir, config.name, config.captions_per_image,
                              config.batch_size, config.image_size)
    splits = tfds.builder_from_directory(path).info.splits
    return {"dataset_dir": path, "splits": {s: splits[s].num_examples for s in splits}}
