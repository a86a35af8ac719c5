"""A COCO-sized dry run on any machine, with nothing downloaded: a dataset of the Karpathy
split's size (113,287 train images with restval, 5,000 val, 5,000 test; 5 captions each,
512-d embeddings like CLIP ViT-B/32's) written from synthetic embeddings and captions; the
captioning experiment with the paper's setup and a randomly initialised GPT-2 small for a
few steps, evaluated on a slice of the test split; the text-to-image experiment (LAFITE's
StyleGAN2 at 64 px, a random CLIP ViT-B/32 as its frozen encoder) for a few steps. Writes
peak memory, size on disk, write throughput, step times and the projected wall time of
the paper's schedules on this machine to results.json and RESULTS.md.

Variants: '' (Karpathy sizes), 'quick' (a tiny end-to-end check for tests).
Each part has its own nested config, set from the command line by its path:
--config.dataset.train_size=..., --config.captioner.steps=20, --config.t2i.image_size=...
"""
import ml_collections

from configs import parse_arg

VARIANTS = ("quick",)


def dataset(quick: bool = False) -> ml_collections.ConfigDict:
    """The synthetic dataset: the Karpathy split's sizes, CLIP ViT-B/32-like embeddings."""
    d = ml_collections.ConfigDict()
    d.train_size, d.val_size, d.test_size = 113_287, 5_000, 5_000
    d.captions_per_image, d.embedding_dim, d.write_batch = 5, 512, 1024
    if quick:
        d.train_size, d.val_size, d.test_size, d.write_batch = 96, 8, 8, 32
    return d


def captioner(quick: bool = False) -> ml_collections.ConfigDict:
    """Captioning: caption_base's setup (batch 40, prefix 10, MLP mapper) on GPT-2 small."""
    c = ml_collections.ConfigDict()
    c.width, c.depth, c.heads, c.vocab = 768, 12, 12, 50257  # vocab 0: the tokenizer's
    c.steps = 8  # the first compiles; the step time is taken over the others
    c.eval_examples = 120  # three decoding batches of 40
    c.eval_batch = 40
    c.paper_epochs, c.paper_batch = 10, 40  # Section 4.1's schedule, to project
    if quick:
        c.width, c.depth, c.heads, c.vocab = 32, 1, 2, 0
        c.steps, c.eval_examples, c.eval_batch = 3, 8, 4
    return c


def t2i(quick: bool = False) -> ml_collections.ConfigDict:
    """Text-to-image: t2i_base's LAFITE StyleGAN2 (batch 16) at 64 px."""
    t = ml_collections.ConfigDict()
    t.image_size, t.rows, t.steps, t.eval_examples = 64, 256, 5, 16
    t.latent_dim, t.mapping_layers, t.channel_max = 512, 8, 512  # z, w, cond
    t.r1_every = 16  # lazy R1 as t2i_base (two programs: with and without R1)
    t.paper_steps = 750_000  # t2i_base's max_steps, to project
    if quick:
        t.image_size, t.rows, t.steps, t.eval_examples = 16, 32, 3, 4
        t.latent_dim, t.mapping_layers, t.channel_max = 16, 1, 8
        t.r1_every = 1  # one program
    return t


def clip(quick: bool = False) -> ml_collections.ConfigDict:
    """Its frozen encoder: CLIP ViT-B/32's image tower, randomly initialised."""
    c = ml_collections.ConfigDict()
    c.width, c.depth, c.heads, c.image_size, c.patch_size = 768, 12, 12, 224, 32
    if quick:
        c.width, c.depth, c.heads, c.image_size, c.patch_size = 32, 1, 2, 32, 8
    return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    quick = "quick" in parse_arg(arg, VARIANTS, "coco_dryrun")
    c = ml_collections.ConfigDict()
    c.experiment = "coco_dryrun"
    c.seed = 0
    c.dataset, c.captioner = dataset(quick), captioner(quick)
    c.t2i, c.clip = t2i(quick), clip(quick)
    return c
