"""Connect: CLIP ViT-B/32 image and caption embeddings of MS-COCO (Karpathy split, restval
merged into train) into a TFDS dataset that configs/coco_caption.py reads.

--config.clip: a Hugging Face CLIP directory (e.g. openai/clip-vit-base-patch32);
--config.annotations: Karpathy's dataset_coco.json; --config.image_root: the folder holding
train2014/ and val2014/; --config.image_size=256 also stores the images (for
configs/coco_t2i.py). Writes <data_dir>/<name>/1.0.0.
"""
from c3_jax.experiments import datasets
from c3_jax.experiments.schema import parse_arg


def get_config(arg: str = ""):
    parse_arg(arg, (), "coco_extract")
    return datasets.default_config("coco_extract")
