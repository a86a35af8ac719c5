"""Text-to-image ('generate'): a generator trained on image embeddings only, sampled from
text embeddings, scored by CLIP-space and (given Inception weights) FID metrics."""
from __future__ import annotations

from typing import Optional

import numpy as np
from absl import logging

from c3_jax import plots
from c3_jax.experiments import checks
from c3_jax.models.stylegan2 import ARCHITECTURES, D_COND_SUMS
from c3_jax.train.generation import (FID_PROTOCOLS, Encoder, Run, check_init_from,
                                     check_method, evaluate, restore_ema, train)
from c3_jax.workdir import Workdir
from configs import field_types, t2i_base

FIELDS = {"generate": field_types(t2i_base.get_config())}


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
    checks.existing(config.dataset_dir, "dataset_dir")
    for field in ("clip", "inception_weights", "restore_from", "init_from"):
        if config[field]:
            checks.existing(config[field], field)
    if config.init_from:
        check_init_from(config)


def run_generate(config, wd: Workdir, encoder: Optional[Encoder] = None) -> dict:
    """Trains on one modality's embeddings (or restores with ``restore_from``) and
    generates from the other's; writes samples.png and the metrics."""
    run = Run(config, wd, encoder)
    if config.restore_from:
        params, summary = restore_ema(run, config.restore_from), {"restored_from":
                                                                  config.restore_from}
    else:
        params, summary = train(run)
        rows = wd.read_metrics()
        plots.curves({k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])
                      for k in ("d_adv", "g_adv", "g_itd", "g_itc")},
                     "step", "loss", wd.file("losses.png"))
    out = evaluate(run, params, config.eval_max_examples)
    n = min(config.num_samples, len(out["images"]))
    plots.captioned_images(list(out["images"][:n]), {"text": out["captions"][:n]},
                           wd.file("samples.png"))
    np.save(wd.file("generated_test.npy"), out["images"])
    logging.info("text-to-image metrics: %s", out["metrics"])
    return {**summary, "metrics": out["metrics"], "variant": config.variant}
