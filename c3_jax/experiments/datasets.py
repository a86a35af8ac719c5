"""Config-driven dataset building: precomputed embeddings (any space) -> TFDS dataset."""
from __future__ import annotations

import ml_collections
import tensorflow_datasets as tfds

from c3_jax import embed
from c3_jax.data import builders
from c3_jax.experiments import checks
from c3_jax.experiments.schema import field_types
from c3_jax.workdir import Workdir


def default_config(experiment: str) -> ml_collections.ConfigDict:
    """Every field of a dataset-building experiment ('embeddings_dataset' or 'coco_extract')
    with its default."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    if experiment == "embeddings_dataset":
        c.embeddings = ""
        c.captions = ""
        c.name = "paired_embeddings"
    elif experiment == "coco_extract":
        c.clip = "checkpoints/clip-vit-base-patch32"
        c.annotations = "data/coco/dataset_coco.json"
        c.image_root = "data/coco"
        c.name = "coco_karpathy_clip"
    else:
        raise ValueError(f"unknown dataset experiment {experiment!r}; known: "
                         "'embeddings_dataset', 'coco_extract'")
    c.data_dir = "data"
    c.overwrite = False  # True: replace an existing dataset of this name
    if experiment == "coco_extract":
        c.captions_per_image = 5
        c.batch_size = 256
        c.image_size = 0  # > 0 also stores the images at this size (text-to-image: 256)
    return c


FIELDS = {name: field_types(default_config(name))
          for name in ("embeddings_dataset", "coco_extract")}


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
