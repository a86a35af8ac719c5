"""C^3 captioning in ImageBind's space (Table 4 generalization): a captioner trained on
ImageBind text embeddings (1024-d), evaluated on image, audio or video embeddings.

Settings of the official ImageBind config and scripts
(configs/zero_shot/imagebind_coco_stage1_unimodal_text_reconstruction.yaml,
scripts/imagebind_coco_scripts/stage1/*.sh): the MLP mapper (1024 -> 3840 -> 7680) to a
10-token prefix, GPT-2 fine-tuned, AdamW at a constant lr 1e-3 (no scheduler listed),
batch 64, 20 epochs, float32; c3: normalize, remove the mean, noise of the default level
sqrt(0.016), renormalize.

Build the dataset first from precomputed embeddings with configs/embeddings_dataset.py
(fields ``text_embedding`` and ``<modality>_embedding``, one caption per row).
Variants: ``:<modality>[,<ablation>]`` with modality image | audio (Clotho) | video
(MSR-VTT) and ablation c1 | c2_collapse | c2_corrupt | c3 (default).
"""
from c3_jax.experiments import caption
from c3_jax.experiments.schema import parse_arg

MODALITIES = ("image", "audio", "video")
ABLATIONS = ("c1", "c2_collapse", "c2_corrupt", "c3")
VARIANTS = MODALITIES + ABLATIONS


def get_config(arg: str = "audio"):
    c = caption.default_config("caption")
    c.captioner.mapper = "mlp"  # 1024 -> 3840 -> 7680
    c.captioner.prefix_length = 10
    c.captioner.clip_length = 10
    c.captioner.lr = 1e-3
    c.captioner.lr_schedule = "constant"  # no scheduler in the official config
    c.captioner.batch_size = 64
    c.captioner.num_epochs = 20
    c.data.dataset_dir = "data/clotho_imagebind/1.0.0"
    c.data.eval_field = "audio_embedding"
    for part in parse_arg(arg or "audio", VARIANTS, "imagebind_caption"):
        if part in MODALITIES:
            c.data.eval_field = f"{part}_embedding"
            c.data.dataset_dir = {"image": "data/coco_imagebind/1.0.0",
                             "audio": "data/clotho_imagebind/1.0.0",
                             "video": "data/msrvtt_imagebind/1.0.0"}[part]
        elif part in ABLATIONS:
            c.method.variant = part
    return c
