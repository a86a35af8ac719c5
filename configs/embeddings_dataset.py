"""Precomputed paired embeddings (ImageBind audio/video/image, CLIP, ...) -> TFDS dataset.

--config.embeddings: an .npz whose keys are '<split>/<field>', e.g. 'train/audio_embedding',
'train/text_embedding', 'test/audio_embedding', ... (row i of every field of a split is one
example). --config.captions: optional JSON {split: [caption or [captions], ...]}.
"""
from c3_jax.experiments import datasets
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "embeddings_dataset")
    return datasets.default_config("embeddings_dataset")
