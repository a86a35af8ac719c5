"""Corrupt's sigma on the built-in world: C^3 captioners at each sigma x seed, trained as
one sweep on the main job's world and Connect, scored on test images, against the sigma
calibrated from the learned space's alignment noise."""
from __future__ import annotations

from typing import Optional

import ml_collections
from absl import logging

from c3_jax import c3, plots, stats
from c3_jax.eval.caption_metrics import Scorer
from c3_jax.experiments import schema
from c3_jax.experiments.schema import field_types
from c3_jax.workdir import Workdir
from c3_jax.world import caption, common


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Every field of the sigma sweep ('shapes_sigma_sweep') with its default: the main job's
    fields, C^3 alone over ``sigmas``; ``quick``: a tiny end-to-end check for tests."""
    c = caption.default_config(quick)
    c.experiment = "shapes_sigma_sweep"
    c.sweep.variants = ("c3",)
    # 0.1265 = sqrt(0.016), the paper's
    c.sweep.sigmas = (0.0, 0.1) if quick else (0.0, 0.01, 0.02, 0.05, 0.1, 0.1265, 0.2, 0.3)
    c.sweep.seeds = 2 if quick else 3
    return c


FIELDS = {"shapes_sigma_sweep": field_types(default_config())}
SCORES = ("attribute_accuracy", "exact_match", "CIDEr", "BLEU-4")


def sigmas_of(config) -> list:
    values = schema.floats(config.sweep.sigmas, "sweep.sigmas")
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"config field 'sweep.sigmas' is {config.sweep.sigmas!r}; it must name "
                         "distinct sigmas >= 0")
    return sorted(values)


def check(config) -> None:
    caption.check(config)
    sigmas_of(config)
    if common.variant_names(config.sweep.variants, caption.VARIANTS) != ["c3"]:
        raise ValueError("config field 'sweep.variants' must be ('c3',): the sweep is over its "
                         "sigma")


def run_shapes_sigma_sweep(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """See the module docstring; writes sigma_sweep.png and SIGMA_SWEEP.md (``scorer``:
    as ``caption.run_shapes_caption``'s)."""
    _, _, _, tokenizer, dataset = common.connected_world(config, wd)
    caption.geometry_report(config, dataset, wd)
    calibrated = caption.calibrated_sigma(config, dataset)
    sigmas = sigmas_of(config)
    members = caption.members(config, dataset, sigmas)
    done = caption.train_captioners(config, dataset, caption.gpt2_dir(config, tokenizer, wd),
                                    members, wd, scorer)
    attrs = common.test_attributes(dataset)
    scores = {}
    for m in members:
        result = caption.member_result(done[m.name], attrs)
        scores.setdefault(m.sigma, []).append({k: result[k] for k in SCORES})
    rows = {f"{s:g}": {k: stats.mean_std([r[k] for r in scores[s]]) for k in SCORES}
            for s in sigmas}
    best = max(sigmas, key=lambda s: rows[f"{s:g}"]["attribute_accuracy"]["mean"])
    plots.sweep_panels(
        sigmas, {k: ([rows[f"{s:g}"][k]["mean"] for s in sigmas],
                     [rows[f"{s:g}"][k]["std"] or 0.0 for s in sigmas]) for k in SCORES[:3]},
        {f"calibrated sigma {calibrated:.3f}": calibrated,
         f"paper's sigma {c3.CLIP_SIGMA:.3f}": c3.CLIP_SIGMA},
        "Corrupt's sigma", wd.file("sigma_sweep.png"))
    table = _table(rows, sigmas, config.sweep.seeds, calibrated, best)
    if wd.primary:
        with open(wd.file("SIGMA_SWEEP.md"), "w") as f:
            f.write(table)
    print("\n" + table)
    logging.info("best sigma by attribute accuracy %g; calibrated %.4f", best, calibrated)
    return {"by_sigma": rows, "sigma_calibrated": calibrated, "best_sigma": best,
            "seeds": config.sweep.seeds, "num_test": int(len(attrs["shape"]))}


def _table(rows: dict, sigmas: list, seeds: int, calibrated: float, best: float) -> str:
    lines = ["| sigma | " + " | ".join(SCORES) + " |", "|" + "---|" * (len(SCORES) + 1)]
    for s in sigmas:
        cells = [stats.mean_pm_std(rows[f"{s:g}"][k])
                 for k in SCORES]
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return (f"# C^3 over Corrupt's sigma on the shapes world\n\nScores × 100 on the test "
            f"split, mean ± sample std (ddof = 1) over {seeds} seeds. Calibrated sigma "
            f"(alignment noise of the learned space): {calibrated:.4f}; best sigma by attribute "
            f"accuracy: {best:g}.\n\n"
            + "\n".join(lines) + "\n")
