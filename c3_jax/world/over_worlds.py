"""The main job's orderings over worlds. Each run of ``configs/shapes_caption.py`` with its
own ``--config.seed`` draws its own world, Connect and captioners; its mean over its first
``sweep.seeds`` captioner seeds is that world's figure, and variants are compared by the paired
difference across worlds (95 % t-interval).

    for w in 0 1 2; do python -m c3_jax.main --config=configs/shapes_caption.py \\
        --workdir=runs/world$w --config.seed=$w --config.sweep.seeds=3; done
    python -m c3_jax.world.over_worlds runs/world0 runs/world1 runs/world2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from c3_jax import stats
from c3_jax.world import caption


def world_figures(results: list, seeds: int) -> dict:
    """{variant: {metric: {mean, std, per_seed}}} where ``per_seed`` holds one figure per
    world: the mean over that run's first ``seeds`` captioner seeds."""
    names = [v for v in results[0]["variants"] if all(v in r["variants"] for r in results)]
    return {v: {m: stats.mean_std([np.mean(r["variants"][v][m]["per_seed"][:seeds])
                                   for r in results]) for m in caption.PAIRED_METRICS}
            for v in names}


def report(results: list, seeds: int) -> str:
    """The markdown of ``world_figures`` and their paired differences across worlds."""
    figures = world_figures(results, seeds)
    head = "| variant | " + " | ".join(caption.PAIRED_METRICS) + " |"
    rows = [head, "|" + "---|" * (len(caption.PAIRED_METRICS) + 1)]
    for v, row in figures.items():
        rows.append(f"| {v} | " + " | ".join(
            " / ".join(f"{100 * x:.1f}" for x in row[m]["per_seed"])
            + f" → {100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f}"
            for m in caption.PAIRED_METRICS) + " |")
    return (f"Scores × 100 per world (the mean over its first {seeds} captioner seeds), "
            f"then mean ± sample std over {len(results)} worlds:\n\n" + "\n".join(rows)
            + "\n\nPaired differences across worlds × 100, mean [95 % t-interval]:\n\n"
            + caption.paired_table(caption.paired_differences(figures)) + "\n")


def load(workdir: str) -> dict:
    """A finished main job's results.json."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: give the workdirs of finished shapes_caption runs")
    with open(path) as f:
        result = json.load(f)
    if "variants" not in result:
        raise ValueError(f"{path} is not a shapes_caption result (no 'variants')")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="finished shapes_caption workdirs")
    parser.add_argument("--seeds", type=int, default=3,
                        help="captioner seeds per world to average (the first N)")
    args = parser.parse_args(argv)
    try:
        results = [load(w) for w in args.workdirs]
        if len(results) < 2 or args.seeds < 1:
            raise ValueError("give at least two workdirs and --seeds >= 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(results, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
