"""Text-to-image ('t2i'): a generator trained on image embeddings only, sampled from
text embeddings, scored by CLIP-space and (given Inception weights) FID metrics."""
from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np
from absl import logging

from c3_jax import c3, plots
from c3_jax.experiments import checks
from c3_jax.experiments.schema import field_types
from c3_jax.models.stylegan2 import ARCHITECTURES, D_COND_SUMS
from c3_jax.train import gan_sweep
from c3_jax.train.generation import (FID_PROTOCOLS, ITC_SPACES, Encoder, check_init_from,
                                      check_method)
from c3_jax.workdir import Workdir


def default_config() -> ml_collections.ConfigDict:
    """Every field of the text-to-image experiment ('t2i') with its default: the
    paper's COCO setup, Appendix F (config files start from it and change what differs)."""
    c = ml_collections.ConfigDict()
    c.experiment = "t2i"
    # Frozen CLIP ViT-B/32 (Hugging Face directory) for LAFITE's itc term and CLIP-space FD.
    c.clip = "checkpoints/clip-vit-base-patch32"
    c.z_dim, c.w_dim, c.mapping_layers, c.cond_hidden = 512, 512, 8, 512
    c.channel_base, c.channel_max, c.mbstd_group = 32768, 512, 4
    c.architecture = "skip"  # the generator's RGB output: "skip" (StyleGAN2's) or "orig"
    # LAFITE's discriminator adds (features . condition) summed over the whole batch to
    # every logit ("batch", its code); "sample": each example's own dot product.
    c.d_cond_sum = "batch"
    c.conv_clamp = 256.0  # activations clamped to +-256 (LAFITE's commands); 0: none
    # Data: rows with an image, its CLIP image embedding and its captions' text embeddings.
    c.dataset_dir = "data/coco_lafite_clip/1.0.0"
    c.train_split, c.test_split = "train", "test"
    c.image_field, c.train_field, c.eval_field = "image", "image_embedding", "text_embedding"
    c.caption_field = "caption"
    # Training as LAFITE / the C^3 scripts (drboog/Lafite train.py, training/loss.py,
    # training_loop.py): batch 16, Adam lr 2.5e-3, betas (0, 0.99) rescaled for lazy
    # regularization, R1 gamma 10 every 16 steps, path-length penalty every 4, style mixing
    # 0.9, contra_loss terms itd = itc = 10 at temperature 0.5 with lam 0, EMA half-life
    # batch * 10 / 32 kimg with ramp-up 0.05 (none with init_from), x-flips.
    c.variant, c.noise_sigma = "c3", c3.CLIP_SIGMA
    # variant: any of c3.METHODS but decap. The calibrated sigma and c3_aniso's noise model:
    # the residual of the first `calibration_pairs` (image, first caption) pairs of
    # `calibration_split`, its top `noise_rank` directions (0: all).
    c.calibration_split, c.calibration_pairs, c.noise_rank = "train", 500, 0
    c.sigma_from_calibration = False  # True: noise_sigma is ignored for the calibrated sigma
    c.batch_size, c.max_steps = 16, 750_000
    c.lr, c.beta1, c.beta2 = 2.5e-3, 0.0, 0.99
    c.r1_gamma, c.r1_every = 10.0, 16
    c.pl_weight, c.pl_every, c.pl_decay, c.pl_batch_shrink = 2.0, 4, 0.01, 2
    c.style_mixing = 0.9  # StyleGAN2's style-mixing probability (not LAFITE's mixing_prob)
    c.itd_weight, c.itc_weight, c.temperature, c.contra_lam = 10.0, 10.0, 0.5, 0.0
    c.ema_kimg, c.ema_rampup = 5.0, 0.05  # 16 * 10 / 32 kimg
    c.mirror = True  # real images x-flipped at random (--mirror=1); the condition unflipped
    # The itc term encodes the generated image after LAFITE's random crop and bicubic
    # resize to the CLIP's input size (full_preprocess); False: the whole image.
    c.itc_crop = True
    # The C^3 code subtracts the image mean twice in training (dataset.py, then loss.py)
    # for c2_collapse and c3; False: once, as LAFITE's own code and the paper describe.
    c.collapse_twice = True
    # The itc term's image side (generation.ITC_SPACES): "clip", the generated image's
    # normalized CLIP embedding uncollapsed (the official code); "condition", through the
    # member's training transform (noise left out), the space of the condition it is paired with.
    c.itc_space = "clip"
    c.fsdp, c.seed = 1, 0
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 100, 5000, 2
    c.restore_from = ""
    # A LAFITE network pickle to start from (G, D and G_ema; Adam fresh, no EMA ramp-up, as
    # LAFITE's --resume): C^3's Table 3 fine-tunes pre-trained-google-cc-best-fid.pkl.
    c.init_from = ""
    c.skip_nonfinite = False  # True: a step with NaN/Inf losses or gradients is skipped
    # Evaluation (fid_protocol "lafite", LAFITE's and C^3's): one image per row of the first
    # eval_max_examples (30,000) rows of test_split, from one random caption each, against
    # the statistics of every train_split image; LAFITE's rows are COCO val2014 (point
    # test_split at it; the Karpathy test split has 5,000 rows: 5,000 images). "paired":
    # each row's first caption against the same rows' images. FID/IS need the Inception file.
    c.fid_protocol = "lafite"
    c.eval_max_examples, c.eval_batch_size = 30_000, 250
    c.inception_weights, c.num_samples = "", 16
    return c


FIELDS = {"t2i": field_types(default_config())}


def check(config) -> None:
    """Every value of a text-to-image config, checked before any work."""
    check_method(config.variant)
    checks.at_least(config, 1, ["z_dim", "w_dim", "mapping_layers", "cond_hidden",
                                "channel_base", "channel_max", "mbstd_group", "batch_size",
                                "max_steps", "r1_every", "fsdp", "log_every",
                                "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                                "pl_every", "pl_batch_shrink"])
    checks.at_least(config, 0, ["eval_max_examples", "num_samples"])
    checks.at_least(config, 0.0, ["noise_sigma", "r1_gamma", "itd_weight", "itc_weight",
                                  "ema_kimg", "ema_rampup", "pl_weight", "pl_decay",
                                  "style_mixing", "contra_lam", "conv_clamp"])
    checks.positive(config, ["lr", "temperature"])
    checks.one_of(config, "architecture", ARCHITECTURES)
    checks.one_of(config, "d_cond_sum", D_COND_SUMS)
    checks.one_of(config, "fid_protocol", FID_PROTOCOLS)
    checks.one_of(config, "itc_space", ITC_SPACES)
    checks.existing(config.dataset_dir, "dataset_dir")
    for field in ("clip", "inception_weights", "restore_from", "init_from"):
        if config[field]:
            checks.existing(config[field], field)
    if config.init_from:
        check_init_from(config)


def run_t2i(config, wd: Workdir, encoder: Optional[Encoder] = None) -> dict:
    """Trains on one modality's embeddings (or restores with ``restore_from``) and
    generates from the other's, as a sweep of one member; writes samples.png and the
    metrics."""
    member = gan_sweep.config_member(config)
    sweep = gan_sweep.GanSweep(config, [member], wd, encoder)
    if config.restore_from:
        ema = gan_sweep.restore_ema(sweep, config.restore_from)
        summary = {"restored_from": config.restore_from}
    else:
        ema, summaries = gan_sweep.train(sweep)
        summary = summaries[member.name]
        rows = wd.read_metrics()
        plots.curves({k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])
                      for k in ("d_adv", "g_adv", "g_itd", "g_itc")},
                     "step", "loss", wd.file("losses.png"))
    out = gan_sweep.evaluate(sweep, ema, config.eval_max_examples)[member.name]
    n = min(config.num_samples, len(out["images"]))
    plots.captioned_images(list(out["images"][:n]), {"text": out["captions"][:n]},
                           wd.file("samples.png"))
    np.save(wd.file("generated_test.npy"), out["images"])
    logging.info("text-to-image metrics: %s", out["metrics"])
    return {**summary, "metrics": out["metrics"], "variant": config.variant}
