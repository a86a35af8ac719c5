"""The built-in world's main job with every method (shapes_methods ':quick') end to end, and
Connect's loss."""
import json
import os

import numpy as np
import pytest

from c3_jax import runner
from c3_jax.train import connect
from conftest import assert_same_numbers, copy_world, launch_local, mtimes, numbers
from configs import shapes_sigma_sweep


def test_clip_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    scale = np.log(1 / 0.07)
    got = float(connect.clip_loss(x.astype(np.float32), y.astype(np.float32), scale))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    logits = np.exp(scale) * xn @ yn.T
    ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
    np.testing.assert_allclose(got, 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
    # The scale is capped at 100, as CLIP clamps it.
    capped = float(connect.clip_loss(x.astype(np.float32), y.astype(np.float32), np.log(1e4)))
    big = 100 * xn @ yn.T
    np.testing.assert_allclose(capped, 0.5 * (ce(big) + ce(big.T)), rtol=1e-5)


@pytest.mark.slow
def test_quick_main_job_writes_every_output_and_runs_alike_on_two_processes(quick_main_job,
                                                                            tmp_path):
    config, reference = quick_main_job
    results = json.loads((reference / "results.json").read_text())
    for name in ("config.json", "connect/metrics.jsonl", "results.json", "RESULTS.md",
                 "samples.png", "gap_statistics.png", "spectra.png", "gap_structure.png"):
        assert (reference / name).exists(), name
    variants = list(config.sweep.variants)
    assert sorted(results["variants"]) == sorted(variants)
    for name, row in results["variants"].items():
        for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "attribute_accuracy"):
            assert np.isfinite(row[metric]["mean"]), (name, metric)
            assert 0 <= row[metric]["mean"] <= 10, (name, metric)  # CIDEr may exceed 1
    geometry = results["geometry"]
    assert geometry["modality_gap"] > 0 and results["sigma_calibrated"] > 0
    assert geometry["effective_dim_x"] >= 1 and "gap_orthogonality" in geometry["statistics"]
    table = (reference / "RESULTS.md").read_text()
    assert all(f"| {v} |" in table for v in variants)
    # One seed: no "± 0.0"; one chance row.
    assert "±" not in table and table.count("| chance") == 2 and "seed 0" in table
    assert "| DeCap 24.7 / 25.0 / 91.2 |" in table  # the published COCO anchors
    # The val-pair geometry the Connect recipe was chosen by.
    assert 0 <= geometry["val"]["recall_at_1"] <= 1 and geometry["val"]["gap_length"] > 0
    # The world's captions are partly terse: R@1 and gap also on complete val captions.
    assert config.world.caption_omit > 0
    assert 0 <= geometry["val"]["complete_recall_at_1"] <= 1
    assert geometry["val"]["complete_gap_length"] > 0
    connect_rows = [json.loads(line) for line in open(reference / "connect" / "metrics.jsonl")]
    assert any("loss" in r and "learning_rate" in r for r in connect_rows)
    # Re-running the same command reuses everything (Connect checkpoint, captioners). In
    # place: it rewrites only outputs that copy_world leaves out.
    trained = lambda: {k: v for k, v in mtimes(reference, "captioners").items()
                       if "/checkpoints/" in k}
    before = trained()
    again = runner.run(config, str(reference))
    assert json.loads(json.dumps(again["variants"])) == results["variants"]
    assert os.path.isdir(reference / "connect" / "checkpoints" / "latest")
    assert trained() == before != {}
    # The README's own example, launch/local_multiprocess.sh: 2 processes x 1 CPU device
    # give the figures of this run's 1 process x 2 (the sweep's members split over the
    # processes), on one variant of each kind of member setting (fixed sigma, calibrated
    # sigma, a noise factor, decap's memory) to keep the suite short. They start from this
    # run's world and Connect stages (reused on both processes; the shapes_t2i twin in
    # test_multiprocess builds the same world and Connect on 2 processes).
    kinds = ["c1", "c3_calibrated", "c3_aniso", "decap"]
    two = tmp_path / "two"
    connect_log = (reference / "connect" / "metrics.jsonl").read_bytes()
    copy_world(reference, two)
    out = launch_local(2, "configs/shapes_methods.py:quick", two, tmp_path / "logs",
                       f"--config.sweep.variants={','.join(kinds)}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    for output in ("RESULTS.md", "samples.png", "config.json"):
        assert (two / output).exists(), output
    assert (two / "connect" / "metrics.jsonl").read_bytes() == connect_log  # reused
    ran = lambda k: (k.split("/")[2] in kinds if k.startswith("/variants/") else
                     set(k.split("/")[2].split(" − ")) <= set(kinds) if k.startswith("/paired/")
                     else True)
    want = {k: v for k, v in numbers(json.loads((reference / "results.json").read_text())).items()
            if ran(k)}
    assert_same_numbers(numbers(json.loads((two / "results.json").read_text())), want)


@pytest.mark.slow
def test_quick_sigma_sweep_marks_the_calibrated_sigma(quick_main_job, scorer, tmp_path):
    """On the main job's world and Connect (copied: the sweep reuses them)."""
    config = shapes_sigma_sweep.get_config("quick")
    tmp_path = tmp_path / "run"
    copy_world(quick_main_job[1], tmp_path)
    results = runner.run(config, str(tmp_path), scorer=scorer)
    assert mtimes(tmp_path, "connect") == mtimes(quick_main_job[1], "connect")
    assert sorted(results["by_sigma"]) == ["0", "0.1"]
    for row in results["by_sigma"].values():
        assert len(row["attribute_accuracy"]["per_seed"]) == config.sweep.seeds == 2
        assert 0 <= row["attribute_accuracy"]["mean"] <= 1
    assert results["best_sigma"] in (0.0, 0.1) and results["sigma_calibrated"] > 0
    assert (tmp_path / "sigma_sweep.png").exists()
    assert "calibrated sigma" in (tmp_path / "SIGMA_SWEEP.md").read_text().lower()
    # One sweep trained all four captioners.
    assert len([p for p in os.listdir(tmp_path / "captioners") if p.startswith("sweep_")]) == 1
