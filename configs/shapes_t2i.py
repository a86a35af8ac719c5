"""Text-to-image on the built-in world, on CPU with no downloads: the small CLIP of
Connect (the same as shapes_caption's), a LAFITE StyleGAN2 per C^3 variant trained on
``train`` images only, images generated from ``test`` captions, scored by a probe
classifier trained on real images (attribute accuracy) and by the Fréchet distance in the
CLIP image space.

Variants: '' (the full run), 'quick' (a tiny end-to-end check for tests). The C^3
variants (--config.variants=...): c1, c2_collapse, c2_corrupt, c3 (the default four), and
c3_calibrated (c3 at the sigma calibrated on `calibration_pairs` val pairs), c3_std,
c3_aniso (Corrupt with those pairs' residual covariance, at the calibrated sigma).
"""
import ml_collections

from c3_jax.c3 import CLIP_SIGMA
from configs import parse_arg, shapes_caption

VARIANTS = ("quick",)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_t2i")
    world = shapes_caption.get_config("quick" if quick else "")
    c = ml_collections.ConfigDict()
    c.experiment = "shapes_t2i"
    for k in ("seed", "image_size", "two_object_fraction", "connect_size", "train_size",
              "val_size", "test_size", "clip_width", "clip_depth", "clip_heads", "patch_size",
              "projection_dim", "connect_steps", "connect_batch", "connect_lr",
              "connect_temperature"):
        c[k] = world[k]
    c.variants = "c1,c2_collapse,c2_corrupt,c3"
    c.noise_sigma = CLIP_SIGMA
    c.calibration_pairs = world.calibration_pairs
    # Generator and discriminator: 32x32, 32 channels at most, 2 mapping layers.
    c.z_dim, c.w_dim, c.mapping_layers, c.cond_hidden = 32, 64, 2, 64
    c.channel_base, c.channel_max = 512, 32
    c.gan_steps, c.gan_batch, c.gan_lr = 1500, 32, 2.5e-3
    c.r1_gamma, c.r1_every = 1.0, 16
    c.itd_weight, c.itc_weight = 5.0, 10.0
    c.ema_kimg = 2.0
    c.probe_steps = 800
    c.num_samples = 10
    if quick:
        c.z_dim, c.w_dim, c.cond_hidden, c.channel_base, c.channel_max = 8, 16, 16, 128, 8
        c.gan_steps, c.gan_batch = 4, 8
        c.r1_every = 1  # R1 on every step: one compiled G+D program instead of two
        c.probe_steps, c.num_samples = 20, 4
    return c
