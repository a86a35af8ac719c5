"""shapes_t2i's report over generator seeds: mean ± sample std (ddof = 1) of every score,
what the gap costs (text − image, seed by seed) and the variants' paired differences with
t-intervals, against numpy and scipy on made-up scores (the job itself: test_multiprocess)."""
import numpy as np
import pytest
from scipy import stats as sps

from c3_jax.world import common
from c3_jax.world import t2i

ATTRS = common.REPORTED_ATTRIBUTES


def _scores(rng, shift: float) -> dict:
    """One seed's made-up scores of a generator."""
    per = {k: float(np.clip(rng.uniform(0.3, 0.9) + shift, 0, 1)) for k in ATTRS}
    return {"attribute_accuracy": float(np.mean(list(per.values()))),
            "exact_match": float(rng.uniform(0, 0.5)),
            "clip_frechet_distance": float(rng.uniform(0.5, 3.0)),
            "clip_score": float(rng.uniform(0.4, 0.8)), "per_attribute": per}


def test_scores_over_seeds_with_sample_std_and_paired_intervals():
    rng = np.random.default_rng(0)
    runs = {source: {v: [_scores(rng, 0.05 if source == "image" else 0.0) for _ in range(3)]
                     for v in ("c1", "c3")} for source in t2i.GENERATED}
    agg = {source: t2i.aggregate(runs[source]) for source in t2i.GENERATED}
    fd = [r["clip_frechet_distance"] for r in runs["text"]["c3"]]
    row = agg["text"]["c3"]["clip_frechet_distance"]
    assert row["per_seed"] == fd
    assert row["mean"] == pytest.approx(np.mean(fd))
    assert row["std"] == pytest.approx(np.std(fd, ddof=1))
    gap = t2i.gap_cost(agg["text"], agg["image"])
    shape = lambda source: [r["per_attribute"]["shape"] for r in runs[source]["c1"]]
    d = np.subtract(shape("text"), shape("image"))
    half = sps.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
    assert gap["c1"]["shape"]["mean"] == pytest.approx(d.mean())
    assert gap["c1"]["shape"]["low"] == pytest.approx(d.mean() - half, rel=1e-6)
    paired = t2i.paired_differences(agg["text"])
    assert list(paired) == ["c3 − c1"]
    acc = lambda v: [r["attribute_accuracy"] for r in runs["text"][v]]
    assert paired["c3 − c1"]["attribute_accuracy"]["mean"] == pytest.approx(
        np.mean(np.subtract(acc("c3"), acc("c1"))))
    chance = {"mean": 0.3, "exact_match": 0.01, **{k: 0.2 for k in ATTRS}}
    readout = {f: {k: 0.5 for k in ATTRS} for f in t2i.READOUT}
    table = t2i.results_table(agg, gap, paired, {**chance, "mean": 0.99}, chance, readout, 3, 0)
    assert "mean ± sample std (ddof = 1) over 3 generator seeds 0..2" in table
    mean, std = 100 * np.mean(acc("c3")), 100 * np.std(acc("c3"), ddof=1)
    assert f"| c3 | {mean:.1f} ± {std:.1f} |" in table
    assert f"{np.mean(fd):.4f} ± {np.std(fd, ddof=1):.4f}" in table
    assert f"| c3 − c1 | {100 * paired['c3 − c1']['attribute_accuracy']['mean']:+.1f} [" in table
    one = {source: t2i.aggregate({v: s[:1] for v, s in runs[source].items()})
           for source in t2i.GENERATED}
    single = t2i.results_table(one, t2i.gap_cost(one["text"], one["image"]), {}, chance,
                               chance, readout, 1, 4)
    assert "generator seed 4" in single and "±" not in single and "(one seed)" in single
