"""C^3 captioning in ImageBind's space (Table 5 generalization): a linear one-token prefix
trained on ImageBind text embeddings (1024-d), evaluated on image, audio or video embeddings.

Build the dataset first from precomputed embeddings with configs/embeddings_dataset.py
(fields ``text_embedding`` and ``<modality>_embedding``, one caption per row).
Variants: ``:<modality>[,<ablation>]`` with modality image | audio (Clotho) | video
(MSR-VTT) and ablation c1 | c2_collapse | c2_corrupt | c3 (default).
"""
from c3_jax.train.captioning import base_config

MODALITIES = {"image", "audio", "video"}
ABLATIONS = {"c1", "c2_collapse", "c2_corrupt", "c3"}


def get_config(arg: str = "audio"):
    c = base_config("caption")
    c.mapper, c.prefix_length = "linear", 1
    c.lr, c.batch_size, c.num_epochs, c.warmup_steps = 1e-3, 64, 20, 5000
    c.noise_sigma = 0.1
    c.dataset_dir = "data/clotho_imagebind/1.0.0"
    c.eval_field = "audio_embedding"
    for part in filter(None, (p.strip() for p in (arg or "audio").split(","))):
        if part in MODALITIES:
            c.eval_field = f"{part}_embedding"
            c.dataset_dir = {"image": "data/coco_imagebind/1.0.0",
                             "audio": "data/clotho_imagebind/1.0.0",
                             "video": "data/msrvtt_imagebind/1.0.0"}[part]
        elif part in ABLATIONS:
            c.variant = part
        else:
            raise ValueError(f"unknown variant {part!r} of imagebind_caption; known: "
                             f"{sorted(MODALITIES | ABLATIONS)}")
    return c
