"""Runs are safe to rerun: a failed run leaves the workdir as it was, a corrected rerun
reuses exactly the stages whose fields did not change, one workdir holds one run at a time,
datasets are not silently replaced, results are strict JSON, and a Connect that goes
non-finite stops before any checkpoint holds it."""
import copy
import fcntl
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from c3_jax import runner
from c3_jax.train import connect
from c3_jax.workdir import MARKER, Workdir
from configs import embeddings_dataset, geometry_synthetic, shapes_caption, shapes_t2i
from conftest import ROOT, copy_world, mtimes, override, snapshot, tiny_connect

def _quick(**overrides):
    """The main job's :quick config on two variants (what these tests need)."""
    config = override(shapes_caption.get_config("quick"), sweep={"variants": ("c1", "c3")})
    return override(config, **overrides)


# Wrong settings of a finished main job, each refused before anything is written.
FAILED_RUNS = [
    ({"method": {"noise_sigma": -0.1}}, "'method.noise_sigma' is -0.1; it must be >= 0"),
    ({"sweep": {"variants": ("c1", "c4")}}, "unknown variants \\['c4'\\]"),
    ({"connect": {"lr": float("nan")}}, "'connect.lr' is nan; it must be a finite number"),
    ({"captioner": {"batch_size": 0}}, "'captioner.batch_size' is 0; it must be >= 1"),
    ({"captioner": {"batch_size": 100_000}}, "'world.train_size' is 256; it must be >= 100000"),
    ({"data": {"dataset_dir": "data/elsewhere"}}, "'data.dataset_dir' is '.*'; the world "
     "trains its captioners on the dataset and GPT-2 it builds"),
    ({"eval": {"meteor": False}}, "'eval.meteor' is False; the world's tables report METEOR"),
    ({"eval": {"max_examples": 5}}, "'eval.max_examples' is 5; the world scores every test"),
]
# What a rerun of an unchanged config may rewrite: the run's own outputs, no stage.
OUTPUTS = {"results.json", "RESULTS.md", "samples.png", "gap_statistics.png", "spectra.png",
           "gap_structure.png", "gap.png"}


@pytest.mark.slow
def test_reruns_reuse_exactly_the_unchanged_stages_and_failed_ones_change_nothing(
        quick_main_job, scorer, tmp_path):
    """One workdir through a user's corrections (more variants, a captioner setting, a
    world field), with wrong configs and the unchanged one rerun on the way. One test, so
    that the suite trains the main job's stages once for all of these checks. The workdir
    and the fresh run start with the main job's world and Connect (copied; the main job
    built them from nothing), so the fresh run trains its own captioners on them; the world
    field's rerun builds world and Connect again (its one captioner, c1, after them)."""
    workdir = tmp_path / "run"
    copy_world(quick_main_job[1], workdir)
    lr = {"captioner": {"lr": 2e-3}}
    runner.run(_quick(sweep={"variants": ("c1",)}, **lr), str(workdir), scorer=scorer)
    connect_files = mtimes(workdir, "connect")
    c1 = mtimes(workdir, "captioners/c1_seed0")
    # More variants: the world, Connect and the c1 captioner are reused.
    runner.run(_quick(**lr), str(workdir), scorer=scorer)
    assert mtimes(workdir, "connect") == connect_files
    assert mtimes(workdir, "captioners/c1_seed0") == c1
    assert os.path.exists(workdir / "captioners" / "c3_seed0" / "results.json")
    # A captioner setting: captioners again, Connect reused; equal to a fresh run.
    config = _quick()
    results = runner.run(config, str(workdir), scorer=scorer)
    assert mtimes(workdir, "connect") == connect_files
    assert mtimes(workdir, "captioners/c1_seed0") != c1
    copy_world(quick_main_job[1], tmp_path / "fresh")
    fresh = runner.run(config, str(tmp_path / "fresh"), scorer=scorer)
    assert results["variants"] == json.loads(json.dumps(fresh["variants"]))
    assert results["geometry"]["modality_gap"] == pytest.approx(
        fresh["geometry"]["modality_gap"], rel=1e-6)
    # Wrong settings fail before anything is written: the workdir stays byte for byte.
    before = snapshot(workdir)
    for overrides, message in FAILED_RUNS:
        with pytest.raises(runner.ConfigError, match=message):
            runner.run(override(config, **overrides), str(workdir))
        assert snapshot(workdir) == before, overrides
    # The unchanged config again: every stage reused, only the run's outputs rewritten.
    again = runner.run(config, str(workdir), scorer=scorer)
    assert again["variants"] == json.loads(json.dumps(results["variants"]))
    after = snapshot(workdir)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed <= OUTPUTS, sorted(changed)
    # Strict JSON: no NaN or Infinity token in any results file of the run.
    for name in ["results.json"] + [f"captioners/{v}_seed0/results.json" for v in ("c1", "c3")]:
        json.loads((workdir / name).read_text(), parse_constant=lambda token: 1 / 0)
    # A world field: the world and everything after it are built again.
    world = snapshot(workdir / "data" / "shapes_world")
    c1 = mtimes(workdir, "captioners/c1_seed0")
    runner.run(override(config, world={"two_object_fraction": 0.5}, sweep={"variants": ("c1",)}),
               str(workdir), scorer=scorer)
    assert snapshot(workdir / "data" / "shapes_world") != world
    assert mtimes(workdir, "connect") != connect_files
    assert mtimes(workdir, "captioners/c1_seed0") != c1


@pytest.mark.slow
def test_a_workdir_holds_one_run_at_a_time(tmp_path):
    config = override(geometry_synthetic.get_config("quick"), steps=20, chunk=10)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / MARKER).write_text("{}\n")  # a running run wrote its marker first
    with open(workdir / ".lock", "a+") as held:  # as a running run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345")
        held.flush()
        with pytest.raises(runner.ConfigError, match="is in use by another run \\(process 12345"):
            runner.run(config, str(workdir))
    assert not (workdir / "config.json").exists()
    runner.run(config, str(workdir))  # free again
    assert not (workdir / ".lock").exists()


@pytest.mark.slow
def test_empty_workdir_and_user_errors_print_one_line(tmp_path):
    config = geometry_synthetic.get_config("quick")
    with pytest.raises(runner.ConfigError, match="--workdir is empty"):
        runner.run(config, "")
    bad = tmp_path / "bad"
    for args in (["--workdir="], [f"--workdir={bad}", "--config.steps=0", "--config.chunk=10"]):
        out = subprocess.run([sys.executable, "-m", "c3_jax.main",
                              "--config=configs/geometry_synthetic.py:quick", *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not bad.exists()


@pytest.mark.slow
def test_nested_config_fields_are_checked_by_their_path(tmp_path):
    """A composite experiment's parts are nested configs: a field is named, refused or set
    by its path, on the command line too, before anything is written."""
    config = shapes_caption.get_config("quick").to_dict()
    for part, field, value, message in (
            ("connect", "stepz", 3, "\\['connect.stepz'\\] are not used"),
            ("captioner", "lr", "fast", "'captioner.lr' must be float, got str 'fast'"),
            ("connect", "lr", None, "missing field 'connect.lr' \\(float\\)"),
            ("world", None, 5, "'world' must be a nested config, got int 5")):
        wrong = copy.deepcopy(config)
        if field is None:
            wrong[part] = value
        elif value is None:
            del wrong[part][field]
        else:
            wrong[part][field] = value
        with pytest.raises(runner.ConfigError, match=message):
            runner.run(ml_collections.ConfigDict(wrong), str(tmp_path / "never"))
    t2i = shapes_t2i.get_config("quick")
    t2i.generator.architecture = "resnet"
    with pytest.raises(runner.ConfigError, match="'generator.architecture' is 'resnet'; it "
                                                 "must be one of \\('skip', 'orig'\\)"):
        runner.run(t2i, str(tmp_path / "never"))
    out = subprocess.run([sys.executable, "-m", "c3_jax.main",
                          "--config=configs/shapes_t2i.py:quick", "--config.generator.lr=-1.0",
                          f"--workdir={tmp_path / 'never'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: config field 'generator.lr' is -1.0; it must be > 0")
    assert not (tmp_path / "never").exists()


def test_a_dataset_name_is_not_silently_reused(tmp_path):
    arrays = {"train/text_embedding": np.ones((4, 3), np.float32),
              "train/image_embedding": np.zeros((4, 3), np.float32)}
    np.savez(tmp_path / "a.npz", **arrays)
    config = override(embeddings_dataset.get_config(), embeddings=str(tmp_path / "a.npz"),
                   data_dir=str(tmp_path / "data"), name="pairs")
    runner.run(config, str(tmp_path / "first"))
    arrays["train/text_embedding"] = 2 * arrays["train/text_embedding"]
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(runner.ConfigError, match="dataset 'pairs' already exists.*overwrite"):
        runner.run(config, str(tmp_path / "second"))
    assert not (tmp_path / "second").exists()
    result = runner.run(override(config, overwrite=True), str(tmp_path / "second"))
    from c3_jax.data import builders
    row = builders.data_source(result["dataset_dir"], "train")[0]
    np.testing.assert_array_equal(row["text_embedding"], 2 * np.ones(3))


def test_results_are_strict_json(tmp_path):
    wd = Workdir(str(tmp_path))
    wd.write_json("results.json", {"loss": float("nan"), "x": np.float32(np.inf),
                                   "rows": [1.0, np.nan]})
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "x": None, "rows": [1.0, None]}
    wd.log_metrics(1, {"loss": float("nan")})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}


@pytest.mark.slow
def test_a_connect_that_goes_non_finite_saves_no_checkpoint(tmp_path):
    model, pairs = tiny_connect(Workdir(str(tmp_path)))
    wd = Workdir(str(tmp_path))
    cfg = connect.ConnectConfig(steps=6, batch_size=32, lr=1e30, warmup_steps=0, log_every=1,
                                checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradients at step") as err:
        connect.train(model, pairs, cfg, wd, wd.file("checkpoints"))
    first_bad = int(str(err.value).split("at step ")[1].split(";")[0])
    latest = wd.file(os.path.join("checkpoints", "latest"))
    saved = [int(s) for s in os.listdir(latest) if s.isdigit()] if os.path.isdir(latest) else []
    assert all(s < first_bad for s in saved), (saved, first_bad)
    with pytest.raises(ValueError, match="lr=nan must be a finite number"):
        connect.ConnectConfig(lr=float("nan"))


@pytest.mark.slow
def test_a_moved_workdir_reruns_without_retraining(quick_main_job, tmp_path):
    """Stage records hold paths relative to the workdir: a finished workdir moved elsewhere
    reuses every stage (nothing under them is written again)."""
    config, workdir = quick_main_job
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns(".lock"))
    stage_dirs = ("connect", "captioners", "data", "tokenizer", "gpt2", "stages")
    before = {d: mtimes(moved, d) for d in stage_dirs if (moved / d).exists()}
    assert "captioners" in before and "connect" in before
    results = runner.run(config, str(moved))
    assert {d: mtimes(moved, d) for d in before} == before
    assert str(workdir) not in json.dumps(results)
