"""Precomputed paired embeddings (ImageBind audio/video/image, CLIP, ...) -> TFDS dataset.

--config.embeddings: an .npz whose keys are '<split>/<field>', e.g. 'train/audio_embedding',
'train/text_embedding', 'test/audio_embedding', ... (row i of every field of a split is one
example). --config.captions: optional JSON {split: [caption or [captions], ...]}.
"""
import ml_collections

from configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parse_arg(arg, (), "embeddings_dataset")
    c = ml_collections.ConfigDict()
    c.experiment = "embeddings_dataset"
    c.embeddings = ""
    c.captions = ""
    c.name = "paired_embeddings"
    c.data_dir = "data"
    c.overwrite = False  # True: replace an existing dataset of this name
    return c
