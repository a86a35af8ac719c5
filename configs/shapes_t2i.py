"""Text-to-image on the built-in world, on CPU with no downloads: the small CLIP of
Connect (the same as shapes_caption's), LAFITE StyleGAN2s trained on ``train`` images only,
one per C^3 variant and generator seed (--config.sweep.seeds, 3 by default: members
<variant>_seed<k> of one sweep), images generated from ``test`` captions (and, with no
modality gap, from the test images' own embeddings), scored by a probe classifier trained
on real images (attribute accuracy) and by the Fréchet distance in the CLIP image space;
RESULTS.md reports mean ± sample std over the seeds, what the gap costs and paired
differences with 95 % t-intervals.

Variants: '' (the full run), 'quick' (a tiny end-to-end check for tests). The C^3
variants (--config.sweep.variants=...): c1, c2_collapse, c2_corrupt, c3 (the default four), and
c3_calibrated (c3 at the sigma calibrated on `method.calibration_pairs` val pairs), and this
project's own c3_standardize and c3_aniso (Corrupt with those pairs' shrunk residual
covariance, at the calibrated sigma); see c3.member_settings.
The world and Connect are shapes_caption's nested configs (--config.world.*,
--config.connect.*); the generators' settings are --config.generator.*.
"""
from c3_jax.experiments.schema import parse_arg
from c3_jax.world import t2i

VARIANTS = ("quick",)


def get_config(arg: str = ""):
    quick = "quick" in parse_arg(arg, VARIANTS, "shapes_t2i")
    return t2i.default_config(quick)
