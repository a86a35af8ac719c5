"""The bad-input matrix: each bad input stops with a message naming the field, file or shape,
and leaves what is already on disk unchanged."""
import contextlib
import os
import re
import shutil
import subprocess

import ml_collections
import numpy as np
import pytest

from c3_jax import runner
from c3_jax.data import builders
from c3_jax.data.text import encode_captions
from c3_jax.train.checkpoints import CheckpointError
from c3_jax.workdir import MARKER, WorkdirError
from conftest import caption_config, gpt2_dir, override, snapshot, t2i_config


def _occupied(path) -> dict:
    """A workdir of ours already holding files (not a run's config.json); their snapshot."""
    path.mkdir(parents=True)
    (path / MARKER).write_text('{"c3_jax_workdir": 1}\n')
    (path / "notes.txt").write_text("an earlier experiment's notes\n")
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    return snapshot(path)


def _kept(path, before: dict) -> None:
    """The files of ``before`` are unchanged; a run that stopped added only its config.json."""
    after = snapshot(path)
    assert {k: after.get(k) for k in before} == before
    assert set(after) - set(before) <= {"config.json"}


def _where(path) -> str:
    return re.escape(str(path))


@pytest.fixture(scope="module")
def finished(t2i_world, tmp_path_factory):
    """A finished 2-step generation run, checkpointed at steps 1 and 2: (its config, its
    workdir, the snapshot of its files). Tests leave it as it is (each checks its snapshot)."""
    config = t2i_config(t2i_world, generator=dict(max_steps=2, checkpoint_every=1))
    workdir = tmp_path_factory.mktemp("finished") / "run"
    runner.run(config, str(workdir))
    return config, workdir, snapshot(workdir)


def test_nan_or_inf_embeddings_leave_the_dataset_of_that_name_as_it_is(tmp_path):
    good = np.ones((4, 3), np.float32)
    builders.build_pairs_dataset("pairs", str(tmp_path), {"train": {"text_embedding": good}})
    before = snapshot(tmp_path)
    for bad in (np.nan, np.inf):
        e = good.copy()
        e[2, 1] = bad
        with pytest.raises(ValueError, match="array 'text_embedding' contains NaN or Inf"):
            builders.build_pairs_dataset("pairs", str(tmp_path), {"train": {"text_embedding": e}})
        with pytest.raises(ValueError, match="array 'text_embedding' contains NaN or Inf"):
            builders.build_pairs_dataset("new", str(tmp_path), {"train": {"text_embedding": e}})
    assert snapshot(tmp_path) == before
    assert not os.path.exists(tmp_path / "new")


def test_empty_and_over_long_captions(t2i_world, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(t2i_world["clip"])
    with pytest.raises(ValueError, match="caption 1 is empty"):
        encode_captions(tok, ["a red circle", "  "], 8)
    with pytest.raises(ValueError, match="caption 0 has 5 tokens with EOS, over max_length=3"):
        encode_captions(tok, ["a red circle on"], 3)
    # Through a captioning run, which encodes every caption before building its model.
    gpt2_dir(tmp_path / "gpt2")
    split = {"text_embedding": np.ones((8, 2, 16), np.float32),
             "image_embedding": np.ones((8, 16), np.float32)}
    with builders.PairsWriter("empty", str(tmp_path / "data"), {"train": 8},
                              builders.fields_of({"train": split})[0], (2,)) as writer:
        writer.write("train", 0, split, [["a red square .", " "]] * 8)  # as an older build
    empty = writer.final
    for name, dataset, overrides, message in (
            ("empty", empty, {}, "caption 1 is empty"),
            ("long", t2i_world["dataset"],
             {"data": {"max_caption_tokens": 3, "truncate_captions": False}},
             "caption 0 has 5 tokens with EOS, over max_length=3")):
        before = _occupied(tmp_path / name)
        config = caption_config({"dataset": dataset, "gpt2": str(tmp_path / "gpt2")}, **overrides)
        with pytest.raises(ValueError, match=message):
            runner.run(config, str(tmp_path / name))
        _kept(tmp_path / name, before)


def test_a_dataset_missing_a_split_names_the_splits_it_has(t2i_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset directory .* does not exist"):
        builders.data_source(str(tmp_path / "nowhere"), "train")
    before = _occupied(tmp_path / "run")
    with pytest.raises(KeyError, match="has no split 'val'; it has \\['test', 'train'\\]"):
        runner.run(t2i_config(t2i_world, data=dict(train_split="val")), str(tmp_path / "run"))
    _kept(tmp_path / "run", before)


def test_embedding_width_that_does_not_match_the_encoder(t2i_world, tmp_path):
    rng = np.random.default_rng(0)
    split = {"image": rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8),
             "image_embedding": rng.normal(size=(8, 5)).astype(np.float32),
             "text_embedding": rng.normal(size=(8, 2, 5)).astype(np.float32)}
    captions = [["a", "b"]] * 8
    data = builders.build_pairs_dataset("narrow", str(tmp_path / "data"),
                                        {"train": split, "test": split},
                                        {"train": captions, "test": captions})
    before = _occupied(tmp_path / "run")
    with pytest.raises(ValueError, match="gives 16-d embeddings but 'image_embedding' is 5-d"):
        runner.run(t2i_config(t2i_world, data=dict(dataset_dir=data)), str(tmp_path / "run"))
    _kept(tmp_path / "run", before)


def test_a_run_stopped_before_any_progress_gives_way_to_the_fixed_config(tmp_path):
    """After bad input the workdir holds only config.json: the corrected config may run
    there; once a metric or a checkpoint exists, another config is refused."""
    from c3_jax.workdir import Workdir
    wd = Workdir(str(tmp_path / "run"))
    (tmp_path / "run" / MARKER).write_text("{}\n")
    wd.write_json("config.json", {"experiment": "caption", "lr": 1.0, "dataset_dir": "wrong"})
    new = {"experiment": "caption", "lr": 1.0, "dataset_dir": "right"}
    runner.check_workdir(wd.path, new)
    for progress in ("metrics.jsonl", "checkpoints/latest/5"):
        os.makedirs(os.path.dirname(wd.file(progress)), exist_ok=True)
        (tmp_path / "run" / progress).touch()
        with pytest.raises(runner.ConfigError, match=r"\['dataset_dir'\] differ"):
            runner.check_workdir(wd.path, new)
        os.remove(wd.file(progress))


@pytest.mark.slow
def test_unknown_or_mistyped_config_fields(finished):
    config, workdir, before = finished
    unknown = ml_collections.ConfigDict({**config.to_dict(), "lerning_rate": 1e-3})
    with pytest.raises(runner.ConfigError, match="\\['lerning_rate'\\] are not used"):
        runner.run(unknown, str(workdir))
    fields = config.to_dict()
    fields["generator"]["batch_size"] = "eight"
    mistyped = ml_collections.ConfigDict(fields)
    with pytest.raises(runner.ConfigError,
                       match="'generator.batch_size' must be int, got str 'eight'"):
        runner.run(mistyped, str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_workdir_holding_a_run_of_another_config(finished):
    config, workdir, before = finished
    with pytest.raises(runner.ConfigError, match=f"--workdir {_where(workdir)} holds a run of "
                       "another config \\(fields \\['generator.lr'\\] differ\\)"):
        runner.run(override(config, generator={"lr": 1.0}), str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture(t2i_world, finished, tmp_path):
    _, workdir, before = finished
    other = t2i_config(t2i_world, generator=dict(channel_max=16, restore_from=str(workdir)))
    eval_before = _occupied(tmp_path / "eval")
    with pytest.raises(CheckpointError, match=(
            f"checkpoint {_where(workdir / 'checkpoints' / 'latest' / '2')} holds a model of "
            "another architecture: \\d+ array\\(s\\) differ, e.g. '.*' is \\(.*\\) there but "
            "\\(.*\\) here")):
        runner.run(other, str(tmp_path / "eval"))
    assert snapshot(workdir) == before
    _kept(tmp_path / "eval", eval_before)


def _damaged_copy(finished, tmp_path, damage) -> tuple:
    """A copy of the finished run whose latest checkpoint (step 2; step 1's is intact) has
    been damaged by ``damage(state_dir)``: (its workdir, that checkpoint's directory, the
    snapshot of its files)."""
    copy = tmp_path / "copy"
    shutil.copytree(finished[1], copy)
    step_dir = copy / "checkpoints" / "latest" / "2"
    assert os.path.isdir(copy / "checkpoints" / "latest" / "1")
    damage(step_dir / "state")
    return copy, step_dir, snapshot(copy)


def _restoring_fails(config, copy, before, tmp_path, message) -> None:
    """Evaluating from ``copy`` and resuming training in it both stop with ``message`` (not
    falling back to the checkpoint of step 1) and leave its files as they are."""
    eval_before = _occupied(tmp_path / "eval")
    for restore_from, workdir in ((str(copy), tmp_path / "eval"), ("", copy)):
        with pytest.raises(CheckpointError, match=message):
            runner.run(override(config, generator={"restore_from": restore_from}),
                       str(workdir))
        assert snapshot(copy) == before
    _kept(tmp_path / "eval", eval_before)


def _truncate_arrays(state_dir) -> None:
    victims = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs
               if f not in ("_METADATA", "_CHECKPOINT_METADATA", "_sharding", "manifest.ocdbt")]
    assert victims
    for v in victims:
        with open(v, "r+b") as f:
            f.truncate(max(os.path.getsize(v) // 2, 1))


@pytest.mark.slow
def test_a_corrupt_checkpoint(finished, tmp_path):
    copy, step_dir, before = _damaged_copy(finished, tmp_path, _truncate_arrays)
    _restoring_fails(finished[0], copy, before, tmp_path,
                     f"checkpoint {_where(step_dir)} could not be restored \\(corrupt or "
                     "incomplete\\): ValueError: OUT_OF_RANGE")


@pytest.mark.slow
def test_missing_checkpoint_files(finished, tmp_path):
    copy, step_dir, before = _damaged_copy(finished, tmp_path, shutil.rmtree)
    _restoring_fails(finished[0], copy, before, tmp_path,
                     f"checkpoint {_where(step_dir)} could not be restored \\(corrupt or "
                     f"incomplete\\): .* does not exist at {_where(step_dir / 'state')}")
    evaluation = override(finished[0], generator={"restore_from": str(copy)})
    latest = copy / "checkpoints" / "latest"
    shutil.rmtree(latest)  # as if the run had stopped before its first checkpoint
    with pytest.raises(FileNotFoundError, match=f"no latest checkpoint in {_where(latest)}"):
        runner.run(evaluation, str(tmp_path / "eval"))
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(FileNotFoundError, match=f"{_where(copy)} has no checkpoints/ directory"):
        runner.run(evaluation, str(tmp_path / "eval"))
    assert snapshot(copy) == {k: v for k, v in before.items() if not k.startswith("checkpoints")}


@contextlib.contextmanager
def _refusing_new_files(path):
    """Makes directory ``path`` refuse new files to this process. Root ignores permission
    bits, so as root the directory is made immutable (``chattr +i``: needs the
    CAP_LINUX_IMMUTABLE capability and a filesystem with the attribute, e.g. ext4)."""
    if os.geteuid() != 0:
        mode = os.stat(path).st_mode
        os.chmod(path, 0o500)
        try:
            yield
        finally:
            os.chmod(path, mode)
        return
    out = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"cannot make {path} non-writable for root: {out.stderr}"
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_a_non_writable_workdir_stops_the_run_before_it_starts(finished, tmp_path):
    config, workdir, before = finished
    undownloaded = override(config, data={"dataset_dir": str(tmp_path / "not_yet_downloaded")})
    with _refusing_new_files(workdir):  # stops before the dataset is looked for
        with pytest.raises(WorkdirError, match=f"--workdir {_where(workdir)} is not writable: "):
            runner.run(undownloaded, str(workdir))
    assert snapshot(workdir) == before
    inside_a_file = workdir / "config.json" / "run"
    with pytest.raises(WorkdirError, match=f"--workdir {_where(inside_a_file)} cannot be created"):
        runner.run(config, str(inside_a_file))
    assert snapshot(workdir) == before
