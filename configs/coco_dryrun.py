"""A COCO-sized dry run on any machine, with nothing downloaded: a dataset of the Karpathy
split's size (113,287 train images with restval, 5,000 val, 5,000 test; 5 captions each,
512-d embeddings like CLIP ViT-B/32's) written from synthetic embeddings and captions; the
captioning experiment with the paper's setup and a randomly initialised GPT-2 small for a
few steps, evaluated on a slice of the test split; the text-to-image experiment (LAFITE's
StyleGAN2 at 64 px, a random CLIP ViT-B/32 as its frozen encoder) for a few steps. Writes
peak memory, size on disk, write throughput, step times and the projected wall time of
the paper's schedules on this machine to results.json and RESULTS.md.

Variants: '' (Karpathy sizes), 'quick' (a tiny end-to-end check for tests).
"""
import ml_collections

from configs import parse_arg

VARIANTS = ("quick",)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    quick = "quick" in parse_arg(arg, VARIANTS, "coco_dryrun")
    c = ml_collections.ConfigDict()
    c.experiment = "coco_dryrun"
    c.seed = 0
    c.train_size, c.val_size, c.test_size = 113_287, 5_000, 5_000
    c.captions_per_image, c.embedding_dim, c.write_batch = 5, 512, 1024
    # Captioning: caption_base's setup (batch 40, prefix 10, MLP mapper) on GPT-2 small.
    c.gpt2_width, c.gpt2_depth, c.gpt2_heads, c.gpt2_vocab = 768, 12, 12, 50257  # 0: the tokenizer's
    c.caption_steps = 8  # the first compiles; the step time is taken over the others
    c.caption_eval_examples = 120  # three decoding batches of 40
    c.caption_eval_batch = 40
    c.paper_epochs, c.paper_batch = 10, 40  # Section 4.1's schedule, to project
    # Text-to-image: t2i_base's LAFITE StyleGAN2 (batch 16) at 64 px.
    c.t2i_image_size, c.t2i_rows, c.t2i_steps, c.t2i_eval_examples = 64, 256, 5, 16
    c.t2i_latent_dim, c.t2i_mapping_layers, c.t2i_channel_max = 512, 8, 512  # z, w, cond
    c.t2i_r1_every = 16  # lazy R1 as t2i_base (two programs: with and without R1)
    c.paper_t2i_steps = 750_000  # t2i_base's max_steps, to project
    # Its frozen encoder: CLIP ViT-B/32's image tower, randomly initialised.
    c.clip_width, c.clip_depth, c.clip_heads, c.clip_image_size, c.clip_patch_size = (
        768, 12, 12, 224, 32)
    if quick:
        c.train_size, c.val_size, c.test_size, c.write_batch = 96, 8, 8, 32
        c.gpt2_width, c.gpt2_depth, c.gpt2_heads, c.gpt2_vocab = 32, 1, 2, 0
        c.caption_steps, c.caption_eval_examples, c.caption_eval_batch = 3, 8, 4
        c.t2i_image_size, c.t2i_rows, c.t2i_steps, c.t2i_eval_examples = 16, 32, 3, 4
        c.t2i_latent_dim, c.t2i_mapping_layers, c.t2i_channel_max = 16, 1, 8
        c.t2i_r1_every = 1  # one program
        c.clip_width, c.clip_depth, c.clip_heads, c.clip_image_size, c.clip_patch_size = (
            32, 1, 2, 32, 8)
    return c
