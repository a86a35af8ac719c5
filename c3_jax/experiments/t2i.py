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
    """Every field of the text-to-image experiment ('t2i') with its default: the paper's
    COCO setup, Appendix F (config files, and the built-in world's text-to-image, start
    from it and change what differs). Sub-configs: ``data``, ``generator`` (networks and
    training), ``method`` (the C^3 step), ``eval``."""
    c = ml_collections.ConfigDict()
    c.experiment = "t2i"
    c.seed = 0
    c.data = default_data()
    c.generator = default_generator()
    c.method = default_method()
    c.eval = default_eval()
    return c


def default_data() -> ml_collections.ConfigDict:
    """Rows with an image, its CLIP image embedding and its captions' text embeddings."""
    d = ml_collections.ConfigDict()
    d.dataset_dir = "data/coco_lafite_clip/1.0.0"
    d.train_split = "train"
    d.test_split = "test"
    d.image_field = "image"
    d.train_field = "image_embedding"  # what the generator is conditioned on in training
    d.eval_field = "text_embedding"  # what it generates from at test time
    d.caption_field = "caption"
    return d


def default_generator() -> ml_collections.ConfigDict:
    """LAFITE's StyleGAN2 and its training, as LAFITE and the C^3 scripts (drboog/Lafite
    train.py, training/loss.py, training_loop.py): batch 16, Adam lr 2.5e-3, betas (0, 0.99)
    rescaled for lazy regularization, R1 gamma 10 every 16 steps, path-length penalty every
    4, style mixing 0.9, contra_loss terms itd = itc = 10 at temperature 0.5 with lam 0,
    EMA half-life batch * 10 / 32 kimg with ramp-up 0.05 (none with init_from), x-flips."""
    g = ml_collections.ConfigDict()
    # Frozen CLIP ViT-B/32 (Hugging Face directory) for LAFITE's itc term and CLIP-space FD.
    g.clip = "checkpoints/clip-vit-base-patch32"
    g.z_dim = 512
    g.w_dim = 512
    g.mapping_layers = 8
    g.cond_hidden = 512
    g.channel_base = 32768
    g.channel_max = 512
    g.mbstd_group = 4
    g.architecture = "skip"  # the generator's RGB output: "skip" (StyleGAN2's) or "orig"
    # LAFITE's discriminator adds (features . condition) summed over the whole batch to
    # every logit ("batch", its code); "sample": each example's own dot product.
    g.d_cond_sum = "batch"
    g.conv_clamp = 256.0  # activations clamped to +-256 (LAFITE's commands); 0: none
    g.batch_size = 16
    g.max_steps = 750_000
    g.lr = 2.5e-3
    g.beta1 = 0.0
    g.beta2 = 0.99
    g.r1_gamma = 10.0
    g.r1_every = 16
    g.pl_weight = 2.0
    g.pl_every = 4
    g.pl_decay = 0.01
    g.pl_batch_shrink = 2
    g.style_mixing = 0.9  # StyleGAN2's style-mixing probability (not LAFITE's mixing_prob)
    g.itd_weight = 10.0
    g.itc_weight = 10.0
    g.temperature = 0.5
    g.contra_lam = 0.0
    g.ema_kimg = 5.0  # 16 * 10 / 32 kimg
    g.ema_rampup = 0.05
    g.mirror = True  # real images x-flipped at random (--mirror=1); the condition unflipped
    # The itc term encodes the generated image after LAFITE's random crop and bicubic
    # resize to the CLIP's input size (full_preprocess); False: the whole image.
    g.itc_crop = True
    # The C^3 code subtracts the image mean twice in training (dataset.py, then loss.py)
    # for c2_collapse and c3; False: once, as LAFITE's own code and the paper describe.
    g.collapse_twice = True
    # The itc term's image side (generation.ITC_SPACES): "clip", the generated image's
    # normalized CLIP embedding uncollapsed (the official code); "condition", through the
    # member's training transform (noise left out), the space of the condition it is paired with.
    g.itc_space = "clip"
    g.fsdp = 1  # devices each generator's params are sharded over
    g.log_every = 100
    g.checkpoint_every = 5000
    g.keep_checkpoints = 2
    g.restore_from = ""  # a run's workdir to evaluate, with no training
    # A LAFITE network pickle to start from (G, D and G_ema; Adam fresh, no EMA ramp-up, as
    # LAFITE's --resume): C^3's Table 3 fine-tunes pre-trained-google-cc-best-fid.pkl.
    g.init_from = ""
    g.skip_nonfinite = False  # True: a step with NaN/Inf losses or gradients is skipped
    return g


def default_method() -> ml_collections.ConfigDict:
    """The C^3 step between the embeddings and the generator (c3.member_settings)."""
    m = ml_collections.ConfigDict()
    m.variant = "c3"  # any of c3.METHODS but decap
    m.noise_sigma = c3.CLIP_SIGMA
    m.sigma_from_calibration = False  # True: the calibrated sigma instead of noise_sigma
    # The calibrated sigma and c3_aniso's noise model: the residual of the first
    # `calibration_pairs` (image, first caption) pairs of `calibration_split`, its top
    # `noise_rank` directions (0: all).
    m.calibration_split = "train"
    m.calibration_pairs = 500
    m.noise_rank = 0
    return m


def default_eval() -> ml_collections.ConfigDict:
    """fid_protocol "lafite" (LAFITE's and C^3's): one image per row of the first
    max_examples (30,000) rows of data.test_split, from one random caption each, against
    the statistics of every data.train_split image; LAFITE's rows are COCO val2014 (point
    test_split at it; the Karpathy test split has 5,000 rows: 5,000 images). "paired": each
    row's first caption against the same rows' images. FID/IS need the Inception file."""
    e = ml_collections.ConfigDict()
    e.fid_protocol = "lafite"
    e.max_examples = 30_000
    e.batch_size = 250
    e.inception_weights = ""  # pytorch-fid's Inception weights file; '': no FID / IS
    e.num_samples = 16  # images in samples.png
    return e


FIELDS = {"t2i": field_types(default_config())}


def check_settings(config) -> None:
    """The values of the ``generator``, ``method`` and ``eval`` sub-configs (the built-in
    world's generators too), checked before any work; files are ``check``'s."""
    check_method(config.method.variant)
    checks.at_least(config, 1, [f"generator.{k}" for k in (
        "z_dim", "w_dim", "mapping_layers", "cond_hidden", "channel_base", "channel_max",
        "mbstd_group", "batch_size", "max_steps", "r1_every", "fsdp", "log_every",
        "checkpoint_every", "keep_checkpoints", "pl_every", "pl_batch_shrink")]
        + ["eval.batch_size"])
    checks.at_least(config, 0, ["eval.max_examples", "eval.num_samples", "method.noise_rank"])
    checks.at_least(config, 2, ["method.calibration_pairs"])
    checks.at_least(config, 0.0, ["method.noise_sigma"] + [f"generator.{k}" for k in (
        "r1_gamma", "itd_weight", "itc_weight", "ema_kimg", "ema_rampup", "pl_weight",
        "pl_decay", "style_mixing", "contra_lam", "conv_clamp")])
    checks.positive(config, ["generator.lr", "generator.temperature"])
    checks.one_of(config, "generator.architecture", ARCHITECTURES)
    checks.one_of(config, "generator.d_cond_sum", D_COND_SUMS)
    checks.one_of(config, "generator.itc_space", ITC_SPACES)
    checks.one_of(config, "eval.fid_protocol", FID_PROTOCOLS)


def check(config) -> None:
    """Every value of a text-to-image config, its files, checked before any work."""
    check_settings(config)
    checks.existing(config.data.dataset_dir, "data.dataset_dir")
    for path in ("generator.clip", "eval.inception_weights", "generator.restore_from",
                 "generator.init_from"):
        if checks.value(config, path):
            checks.existing(checks.value(config, path), path)
    if config.generator.init_from:
        check_init_from(config)


def run_t2i(config, wd: Workdir, encoder: Optional[Encoder] = None) -> dict:
    """Trains on one modality's embeddings (or restores with ``restore_from``) and
    generates from the other's, as a sweep of one member; writes samples.png and the
    metrics."""
    member = gan_sweep.config_member(config)
    sweep = gan_sweep.GanSweep(config, [member], wd, encoder)
    if config.generator.restore_from:
        ema = gan_sweep.restore_ema(sweep, config.generator.restore_from)
        summary = {"restored_from": config.generator.restore_from}
    else:
        ema, summaries = gan_sweep.train(sweep)
        summary = summaries[member.name]
        rows = wd.read_metrics()
        plots.curves({k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])
                      for k in ("d_adv", "g_adv", "g_itd", "g_itc")},
                     "step", "loss", wd.file("losses.png"))
    out = gan_sweep.evaluate(sweep, ema, config.eval.max_examples)[member.name]
    n = min(config.eval.num_samples, len(out["images"]))
    plots.captioned_images(list(out["images"][:n]), {"text": out["captions"][:n]},
                           wd.file("samples.png"))
    np.save(wd.file("generated_test.npy"), out["images"])
    logging.info("text-to-image metrics: %s", out["metrics"])
    return {**summary, "metrics": out["metrics"], "variant": config.method.variant}
