"""The absl entry point: config validation, dispatch and run outputs."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from c3_jax import runner
from configs import geometry_embeddings, geometry_mlp_collapse, geometry_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "c3_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_unknown_experiment_is_named():
    with pytest.raises(runner.ConfigError, match="unknown experiment 'nope'.*geometry_synthetic"):
        runner.resolve(ml_collections.ConfigDict({"experiment": "nope"}))


def test_missing_field_is_named():
    c = geometry_synthetic.get_config()
    del c["tau"]
    with pytest.raises(runner.ConfigError, match="missing field 'tau' \\(float\\)"):
        runner.resolve(c)


def test_wrong_type_is_named():
    # ConfigDict locks a field's type once set, so a wrong type comes from the file itself.
    c = ml_collections.ConfigDict({**geometry_mlp_collapse.get_config().to_dict(), "depth": "fifty"})
    with pytest.raises(runner.ConfigError, match="'depth' must be int, got str 'fifty'"):
        runner.resolve(c)


def test_unknown_field_is_named():
    c = geometry_synthetic.get_config()
    c.stepz = 3
    with pytest.raises(runner.ConfigError, match="\\['stepz'\\] are not used"):
        runner.resolve(c)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'slow'"):
        geometry_synthetic.get_config("slow")


@pytest.mark.slow
def test_cli_override_of_wrong_type_fails_naming_the_field(tmp_path):
    out = _cli("--config=configs/geometry_mlp_collapse.py", "--config.depth=abc",
               f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert "depth" in out.stderr


@pytest.mark.slow
def test_synthetic_run_writes_outputs(tmp_path):
    out = _cli("--config=configs/geometry_synthetic.py:quick", "--config.steps=200",
               "--config.chunk=100", "--config.num_pairs=100", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.load(open(tmp_path / "results.json"))
    for key in ("effective_dim_x", "effective_dim_y", "gap_init", "gap_init_ineffective",
                "gap_final", "gap_final_ineffective", "ineffective_variance_max_final",
                "loss_init", "loss_final", "achieved_gflops"):
        assert key in results, key
    assert results["effective_dim_x"] == 25 and results["loss_final"] < results["loss_init"]
    config = json.load(open(tmp_path / "config.json"))
    assert config["steps"] == 200 and config["experiment"] == "geometry_synthetic"
    metrics = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [100, 200]
    for png in ("variance_before_after.png", "spectra.png", "loss.png", "stable_region.png",
                "gap.png"):
        assert (tmp_path / png).stat().st_size > 1000, png


def test_mlp_collapse_run(tmp_path):
    c = geometry_mlp_collapse.get_config()
    c.num_inputs, c.width, c.depth = 200, 64, 10
    results = runner.run(c, str(tmp_path))
    assert results["layers"] == [0, 5]
    assert (tmp_path / "spectra.png").exists()


@pytest.mark.slow
def test_embeddings_run_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 32)) + 2.0
    y = rng.normal(size=(1000, 32)) - 1.0
    np.savez(tmp_path / "pairs.npz", image=x, text=y)
    c = geometry_embeddings.get_config()
    c.embeddings, c.x_key, c.y_key = str(tmp_path / "pairs.npz"), "image", "text"
    results = runner.run(c, str(tmp_path / "run"))
    assert results["num_groups"] == 10 and results["sigma_calibration_pairs"] == 100
    gap = np.linalg.norm((x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
                         - (y / np.linalg.norm(y, axis=1, keepdims=True)).mean(0))
    assert results["modality_gap"] == pytest.approx(gap, rel=1e-5)
    assert (tmp_path / "run" / "gap_statistics.png").exists()
    assert (tmp_path / "run" / "gap_structure.png").exists()
    structure = results["structure"]  # the gap's structure, checked in test_geometry
    assert structure["transfer"]["splits"] == 10 and 0 < structure["mean_gap_energy_share"] < 1
    assert set(structure["subspace_overlap"]) >= {1, 2, 5, 10, 20}
    c.y_key = "caption"
    with pytest.raises(KeyError, match="no array 'caption'"):
        runner.run(c, str(tmp_path / "run2"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.where(np.arange(32) == 3, np.nan, y))
    c.embeddings = f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    with pytest.raises(ValueError, match="NaN or Inf"):
        runner.run(c, str(tmp_path / "run3"))


@pytest.mark.slow
def test_metrics_reach_tensorboard_without_importing_torch(tmp_path):
    """A run's metrics go to metrics.jsonl and a TensorBoard event file (read back here with
    tensorboardX's protobuf), and a run that does not use torch never imports it."""
    script = ("import sys; from c3_jax.train import loop; from c3_jax.workdir import Workdir\n"
              f"w = loop.MetricWriter(Workdir({str(tmp_path)!r}))\n"
              "w.write(3, {'loss': 1.5}); w.write(4, {'loss': 0.25}); w.close()\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from tensorboardX.proto import event_pb2
    (events,) = os.listdir(tmp_path / "tensorboard")
    data, scalars = (tmp_path / "tensorboard" / events).read_bytes(), []
    while data:  # TFRecord framing: uint64 length, its crc, the record, its crc
        n = int.from_bytes(data[:8], "little")
        event = event_pb2.Event.FromString(data[12:12 + n])
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        data = data[12 + n + 4:]
    assert scalars == [(3, "loss", 1.5), (4, "loss", 0.25)]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["loss"]) for r in rows] == [(3, 1.5), (4, 0.25)]
