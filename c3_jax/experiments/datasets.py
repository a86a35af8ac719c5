"""Config-driven dataset building: precomputed embeddings (any space) -> TFDS dataset."""
from __future__ import annotations

import tensorflow_datasets as tfds

from c3_jax import embed
from c3_jax.data import builders
from c3_jax.experiments import checks
from c3_jax.workdir import Workdir
from configs import coco_extract, embeddings_dataset, field_types

FIELDS = {"embeddings_dataset": field_types(embeddings_dataset.get_config()),
          "coco_extract": field_types(coco_extract.get_config())}


def check(config) -> None:
    """Inputs exist and the dataset is new (or ``overwrite``), before any work."""
    builders.check_new(config.data_dir, config.name, config.overwrite)
    if config.experiment == "embeddings_dataset":
        checks.existing(config.embeddings, "embeddings")
        splits = builders.check_npz_splits(config.embeddings)  # headers only
        if config.captions:
            builders.load_captions_json(config.captions, {
                s: next(iter(f.values()))[0][0] for s, f in splits.items()})
    else:
        for field in ("clip", "annotations", "image_root"):
            checks.existing(config[field], field)
        checks.at_least(config, 1, ["captions_per_image", "batch_size"])
        checks.at_least(config, 0, ["image_size"])


def run_embeddings_dataset(config, wd: Workdir) -> dict:
    """Writes the arrays of an .npz keyed '<split>/<field>' (plus optional captions) as TFDS."""
    splits = builders.load_npz_splits(config.embeddings)
    captions = None
    if config.captions:
        captions = builders.load_captions_json(config.captions, {
            s: len(next(iter(a.values()))) for s, a in splits.items()})
    path = builders.build_pairs_dataset(config.name, config.data_dir, splits, captions,
                                        overwrite=config.overwrite)
    return {"dataset_dir": path,
            "splits": {s: len(next(iter(a.values()))) for s, a in splits.items()},
            "fields": {s: {k: list(v.shape[1:]) for k, v in a.items()} for s, a in splits.items()}}


def run_coco_extract(config, wd: Workdir) -> dict:
    """CLIP image and caption embeddings of MS-COCO (Karpathy split) as a TFDS dataset."""
    del wd
    path = embed.extract_coco(config.clip, config.annotations, config.image_root,
                              config.data_dir, config.name, config.captions_per_image,
                              config.batch_size, config.image_size, config.overwrite)
    splits = tfds.builder_from_directory(path).info.splits
    return {"dataset_dir": path, "splits": {s: splits[s].num_examples for s in splits}}
