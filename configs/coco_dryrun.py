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
from c3_jax.experiments import dryrun
from c3_jax.experiments.schema import parse_arg

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    quick = "quick" in parse_arg(arg, VARIANTS, "coco_dryrun")
    return dryrun.default_config(quick)
