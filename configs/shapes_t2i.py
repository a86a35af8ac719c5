"""Text-to-image on the built-in world, on CPU with no downloads: the small CLIP of
Connect (the same as shapes_caption's), a LAFITE StyleGAN2 per C^3 variant trained on
``train`` images only, images generated from ``test`` captions (and, with no modality gap,
from the test images' own embeddings), scored by a probe classifier trained on real images
(attribute accuracy) and by the Fréchet distance in the CLIP image space.

Variants: '' (the full run), 'quick' (a tiny end-to-end check for tests). The C^3
variants (--config.variants=...): c1, c2_collapse, c2_corrupt, c3 (the default four), and
c3_calibrated (c3 at the sigma calibrated on `calibration_pairs` val pairs), and this
project's own c3_standardize and c3_aniso (Corrupt with those pairs' shrunk residual
covariance, at the calibrated sigma); see c3.member_settings.
The world and Connect are shapes_caption's nested configs (--config.world.*,
--config.connect.*); the generators' settings are --config.generator.*.
"""
import ml_collections

from c3_jax.c3 import CLIP_SIGMA
from configs import parse_arg, shapes_caption

VARIANTS = ("quick",)


def generator(quick: bool = False) -> ml_collections.ConfigDict:
    """LAFITE's generator and discriminator: 32x32, 32 channels at most, 2 mapping layers.
    Settings that differ from StyleGAN2's and LAFITE's: RGB from the last resolution only
    ('orig', not 'skip'), batch 8 (more steps in the same time), Adam's lr 1e-2 (not 2.5e-3)
    and the itc weight 30 (not 10), chosen by the probe's shape accuracy on images drawn
    from the val images' embeddings (c3, seed 0, confirmed at seed 1; README, shapes_t2i)."""
    g = ml_collections.ConfigDict()
    g.z_dim, g.w_dim, g.mapping_layers, g.cond_hidden = 32, 64, 2, 64
    g.channel_base, g.channel_max = 512, 32
    g.architecture = "orig"  # or "skip"
    g.steps, g.batch, g.lr = 6000, 8, 1e-2
    g.r1_gamma, g.r1_every = 1.0, 16
    g.itd_weight, g.itc_weight = 5.0, 30.0
    g.ema_kimg = 2.0
    g.pl_weight, g.style_mixing = 2.0, 0.9  # LAFITE's path-length weight, style mixing
    if quick:
        g.z_dim, g.w_dim, g.cond_hidden, g.channel_base, g.channel_max = 8, 16, 16, 128, 8
        g.steps, g.batch = 4, 8
        g.r1_every = 1  # R1 on every step: one compiled G+D program instead of two
        g.pl_weight = 0.0  # no path-length program to compile
    return g


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_t2i")
    main = shapes_caption.get_config("quick" if quick else "")
    c = ml_collections.ConfigDict()
    c.experiment = "shapes_t2i"
    c.seed = main.seed
    c.variants = "c1,c2_collapse,c2_corrupt,c3"
    c.noise_sigma = CLIP_SIGMA
    c.calibration_pairs = main.calibration_pairs
    c.world, c.connect, c.generator = main.world, main.connect, generator(quick)
    c.probe_steps = 20 if quick else 800  # the attribute probe, trained on real images
    c.num_samples = 4 if quick else 10
    return c
