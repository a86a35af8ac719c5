"""Connect: CLIP ViT-B/32 image and caption embeddings of MS-COCO (Karpathy split, restval
merged into train) into a TFDS dataset that configs/coco_caption.py reads.

--config.clip: a Hugging Face CLIP directory (e.g. openai/clip-vit-base-patch32);
--config.annotations: Karpathy's dataset_coco.json; --config.image_root: the folder holding
train2014/ and val2014/; --config.image_size=256 also stores the images (for
configs/coco_t2i.py). Writes <data_dir>/<name>/1.0.0.
"""
import ml_collections

from configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parse_arg(arg, (), "coco_extract")
    c = ml_collections.ConfigDict()
    c.experiment = "coco_extract"
    c.clip = "checkpoints/clip-vit-base-patch32"
    c.annotations = "data/coco/dataset_coco.json"
    c.image_root = "data/coco"
    c.name = "coco_karpathy_clip"
    c.data_dir = "data"
    c.overwrite = False  # True: replace an existing dataset of this name
    c.captions_per_image = 5
    c.batch_size = 256
    c.image_size = 0  # > 0 also stores the images at this size (text-to-image: 256)
    return c
