"""The misuse matrix (issue 40): each class of misuse ends with one line naming the field
or file and the fix, before any work, and leaves every byte on disk as it was. Most cases
call the runner or the validation functions in-process; a few go through
``python -m c3_jax.main`` to check the exit status and that no traceback is printed."""
import gc
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from c3_jax import console, runner
from c3_jax.data import builders
from c3_jax.workdir import MARKER, WorkdirError, ownership
from conftest import CACHE_ENV, ROOT, override, snapshot
from configs import embeddings_dataset, geometry_mlp_collapse


def _one_line(err) -> str:
    """The line main.py prints for ``err``: one line, no traceback."""
    from c3_jax.main import one_line
    line = one_line(err.value if hasattr(err, "value") else err)
    assert "\n" not in line and "Traceback" not in line, line
    return line


def _tiny():
    """A config of a cheap experiment (refused before it starts in these tests)."""
    return override(geometry_mlp_collapse.get_config(), num_inputs=20, width=8, depth=5)


def _hf_checkpoint(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "gpt2", "n_embd": 768}\n')
    (path / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (path / "model.safetensors").write_bytes(b"\x00weights\x01")


def _git_root(path):
    (path / ".git" / "refs").mkdir(parents=True)
    (path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (path / "README.md").write_text("# a project\n")
    (path / "config.json").write_text('{"experiment": "caption"}\n')  # even one like ours


def _data_folder(path):
    (path / "images").mkdir(parents=True, exist_ok=True)
    (path / "images" / "0001.png").write_bytes(b"\x89PNG fake")
    (path / "captions.json").write_text('{"train": ["a cat"]}\n')


FOREIGN = {"hf_checkpoint": (_hf_checkpoint, "a config.json that is not a c3-jax run's"),
           "git_root": (_git_root, "a git repository (.git)"),
           "data_folder": (_data_folder, "2 entries, e.g. captions.json, images")}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_directory_that_is_not_ours_is_refused_untouched(kind, tmp_path):
    make, found = FOREIGN[kind]
    target = tmp_path / kind
    target.mkdir()
    make(target)
    before = snapshot(target)
    with pytest.raises(WorkdirError) as err:
        runner.run(_tiny(), str(target))
    line = _one_line(err)
    assert f"--workdir {target} is not a c3-jax run (no {MARKER})" in line and found in line
    assert "give an empty or new directory" in line
    assert snapshot(target) == before


def test_workdirs_that_are_ours(tmp_path):
    """Absent or empty: new; the marker: ours; a config.json of ours without the marker
    (a workdir of a version before it): legacy, and it gets the marker when run again."""
    assert ownership(str(tmp_path / "absent"), ["caption"]) == "new"
    assert ownership(str(tmp_path), ["caption"]) == "new"
    (tmp_path / "config.json").write_text(json.dumps(_tiny().to_dict()))
    (tmp_path / "metrics.jsonl").write_text("")
    assert ownership(str(tmp_path), ["geometry_mlp_collapse"]) == "legacy"
    runner.run(_tiny(), str(tmp_path))
    assert ownership(str(tmp_path), []) == "ours"
    assert json.loads((tmp_path / MARKER).read_text())["experiment"] == "geometry_mlp_collapse"
    assert (tmp_path / "results.json").exists()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


GOOD = {"train/text_embedding": np.ones((3, 4), np.float32),
        "train/image_embedding": np.zeros((3, 4), np.float32)}


def _truncated(tmp_path):
    path = _npz(tmp_path / "t.npz", **GOOD)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


# (what the embeddings field gets, the message); each refused before anything is written.
BAD_EMBEDDINGS = {
    "missing": (lambda t: str(t / "nowhere.npz"), "--config.embeddings: .* does not exist"),
    "directory": (lambda t: str(t), "is a directory; give an .npz file"),
    "truncated": (_truncated, "is not a readable .npz .*write it again with numpy.savez"),
    "not_npz": (lambda t: (t / "x.npz").write_text("hello") and str(t / "x.npz"),
                "is not a readable .npz"),
    "wrong_keys": (lambda t: _npz(t / "k.npz", text=np.ones((3, 4))),
                   "key 'text' of .* is not '<split>/<field>'; save the arrays as"),
    "bool": (lambda t: _npz(t / "b.npz", **{"train/x": np.ones((3, 4), bool)}),
             "array 'train/x' of .* is bool; give float"),
    "object": (lambda t: _npz(t / "o.npz", **{"train/x": np.array([None, 1], object)}),
               "array 'train/x' of .* is object; give float"),
    "zero_rows": (lambda t: _npz(t / "z.npz", **{"train/x": np.ones((0, 4), np.float32)}),
                  "split 'train' of .* has no rows"),
    "ragged_rows": (lambda t: _npz(t / "r.npz", **{"train/x": np.ones((3, 4)),
                                                   "train/y": np.ones((2, 4))}),
                    "different row counts"),
    "bad_split_name": (lambda t: _npz(t / "s.npz", **{"my split/x": np.ones((3, 4))}),
                       "split name 'my split' is not allowed"),
}


def _bad_captions(text: bytes):
    def make(t):
        (t / "c.json").write_bytes(text)
        return str(t / "c.json")
    return make


BAD_CAPTIONS = {
    "missing": (lambda t: str(t / "nowhere.json"), "--config.captions: .* does not exist"),
    "directory": (lambda t: str(t), "is a directory; give a JSON file"),
    "not_utf8": (_bad_captions(b'{"train": ["caf\xe9", "a", "b"]}'), "is not UTF-8 text"),
    "invalid_json": (_bad_captions(b'{"train": ["a", "b",]}'), "is not valid JSON"),
    "not_an_object": (_bad_captions(b'["a", "b", "c"]'), "must be a JSON object"),
    "missing_split": (_bad_captions(b'{"val": ["a", "b", "c"]}'),
                      "has no captions for split\\(s\\) \\['train'\\]"),
    "null": (_bad_captions(b'{"train": ["a", null, "c"]}'), "caption 1 is NoneType None"),
    "empty": (_bad_captions(b'{"train": ["", " ", ""]}'), "caption 0 is empty"),
    "ragged": (_bad_captions(b'{"train": [["a", "b"], ["c"], ["d", "e"]]}'),
               "caption 1 is list .*a list of 2 strings"),
    "mixed": (_bad_captions(b'{"train": [["a", "b"], "c", ["d", "e"]]}'),
              "caption 1 is str 'c'; every row must have a list of 2"),
    "empty_list": (_bad_captions(b'{"train": [[], [], []]}'), "a caption is list \\[\\]"),
    "wrong_count": (_bad_captions(b'{"train": ["a", "b"]}'), "has 2 captions for 3 rows"),
}


def _dataset_config(tmp_path, **fields):
    return override(embeddings_dataset.get_config(), **{
        "data_dir": str(tmp_path / "data"), "name": "pairs", **fields})


def _refused_before_any_work(config, tmp_path, message) -> None:
    """``config`` is refused with ``message`` (one line), and neither its workdir nor its
    data_dir is touched."""
    before = snapshot(tmp_path)
    with pytest.raises((runner.ConfigError, ValueError, FileNotFoundError)) as err:
        runner.run(config, str(tmp_path / "run"))
    assert __import__("re").search(message, _one_line(err)), _one_line(err)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("case", sorted(BAD_EMBEDDINGS))
def test_bad_embeddings_files(case, tmp_path):
    make, message = BAD_EMBEDDINGS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config = _dataset_config(tmp_path, embeddings=make(inputs))
    _refused_before_any_work(config, tmp_path, message)


@pytest.mark.parametrize("case", sorted(BAD_CAPTIONS))
def test_bad_captions_files(case, tmp_path):
    make, message = BAD_CAPTIONS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config = _dataset_config(tmp_path, embeddings=_npz(inputs / "e.npz", **GOOD),
                             captions=make(inputs))
    _refused_before_any_work(config, tmp_path, message)


@pytest.mark.parametrize("name", ["", "my pairs", "../up", "a/b", "a-b", "1st", ".hidden"])
def test_bad_dataset_names(name, tmp_path):
    config = _dataset_config(tmp_path, embeddings=_npz(tmp_path / "e.npz", **GOOD), name=name)
    _refused_before_any_work(config, tmp_path, "dataset name .* is not allowed; use letters")
    arrays = {"train": {"x": np.ones((2, 3), np.float32)}}
    with pytest.raises(ValueError, match="is not allowed"):
        builders.build_pairs_dataset(name, str(tmp_path / "data"), arrays)
    assert not (tmp_path / "data").exists() and not (tmp_path / "up").exists()


def test_a_data_dir_that_is_a_file_or_a_foreign_folder(tmp_path):
    npz = _npz(tmp_path / "e.npz", **GOOD)
    (tmp_path / "file").write_text("not a folder")
    config = _dataset_config(tmp_path, embeddings=npz, data_dir=str(tmp_path / "file"))
    before = snapshot(tmp_path)
    with pytest.raises(runner.ConfigError, match="data_dir .* is a file; give a directory"):
        runner.run(config, str(tmp_path / "run"))
    (tmp_path / "data" / "pairs").mkdir(parents=True)  # a folder of that name, not ours
    (tmp_path / "data" / "pairs" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(runner.ConfigError, match="holds notes.txt, which are not versions"):
            runner.run(_dataset_config(tmp_path, embeddings=npz, overwrite=overwrite),
                       str(tmp_path / "run"))
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def _rows(source) -> list:
    return [{k: np.asarray(v).tolist() for k, v in source[i].items()}
            for i in range(len(source))]


def test_a_failed_overwrite_leaves_the_old_dataset_readable_and_equal(tmp_path):
    data = str(tmp_path / "data")
    old = builders.build_pairs_dataset("pairs", data, {"train": {"x": np.ones((3, 2))}},
                                       {"train": ["a", "b", "c"]})
    rows, files = _rows(builders.data_source(old, "train")), snapshot(tmp_path / "data")
    # Refused before the writer exists (ragged captions), through the runner too.
    with pytest.raises(ValueError, match="caption 1 is list"):
        builders.build_pairs_dataset("pairs", data, {"train": {"x": np.zeros((3, 2))}},
                                     {"train": [["a", "b"], ["c"], ["d", "e"]]}, overwrite=True)
    # A build that fails half-way (after rows were written): the old one stays.
    fields = {"x": ((2,), np.float32)}
    with pytest.raises(RuntimeError, match="the encoder crashed"):
        with builders.PairsWriter("pairs", data, {"train": 3}, fields, (), True) as writer:
            writer.write("train", 0, {"x": np.zeros((2, 2))}, ["d", "e"])
            raise RuntimeError("the encoder crashed")
    with pytest.raises(ValueError, match="rows \\[from, to\\) not written"):
        with builders.PairsWriter("pairs", data, {"train": 3}, fields, (), True) as writer:
            writer.write("train", 0, {"x": np.zeros((2, 2))}, ["d", "e"])
    assert snapshot(tmp_path / "data") == files  # no incomplete.* left behind either
    assert _rows(builders.data_source(old, "train")) == rows
    # A complete rebuild replaces it; a swap cut between its renames is undone.
    new = builders.build_pairs_dataset("pairs", data, {"train": {"x": np.zeros((2, 2))}},
                                       {"train": ["d", "e"]}, overwrite=True)
    assert new == old
    assert [r["caption"] for r in _rows(builders.data_source(new, "train"))] == [b"d", b"e"]
    os.rename(new, os.path.join(os.path.dirname(new), "replaced." + builders.VERSION))
    with pytest.raises(FileExistsError, match="already exists"):
        builders.check_new(data, "pairs", overwrite=False)
    assert len(builders.data_source(new, "train")) == 2


def test_relative_and_home_paths_are_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    _npz(tmp_path / "home" / "e.npz", **GOOD)
    config = override(embeddings_dataset.get_config(), embeddings="~/e.npz", data_dir="data",
                      name="pairs")
    runner.run(config, "~/run")
    recorded = json.loads((tmp_path / "home" / "run" / "config.json").read_text())
    assert recorded["embeddings"] == str(tmp_path / "home" / "e.npz")
    assert recorded["data_dir"] == str(tmp_path / "data")
    assert (tmp_path / "data" / "pairs" / builders.VERSION / "dataset_info.json").exists()
    assert config.data_dir == "data"  # the caller's config is not changed


def test_a_compilation_cache_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("")
    for path in (tmp_path / "cache", tmp_path / "cache" / "xla"):
        with pytest.raises(ValueError, match="is a file; give a directory, or "
                                             "--compilation_cache= \\(empty\\)"):
            console.compilation_cache(str(path))


def test_unknown_fields_suggest_the_closest():
    config = ml_collections.ConfigDict({**_tiny().to_dict(), "widht": 3})
    with pytest.raises(runner.ConfigError) as err:
        runner.resolve(config)
    assert "did you mean 'widht' -> 'width'?" in _one_line(err)


def test_leftover_orbax_temporaries_are_removed(tmp_path):
    tmp = tmp_path / "checkpoints" / "latest" / "7.orbax-checkpoint-tmp-123"
    tmp.mkdir(parents=True)
    (tmp / "state").write_text("half")
    (tmp_path / "checkpoints" / "latest" / "5").mkdir()
    assert runner.remove_orbax_tmp(str(tmp_path)) == [str(tmp)]
    assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == ["5"]


# Command lines that absl or the config file would end with a traceback: one line instead.
CLI_ERRORS = {
    "missing_file": (["--config=configs/nope.py"], "--config file configs/nope.py does not exist"),
    "directory": (["--config=configs"], "--config configs is a directory; give a config file"),
    "syntax_error": (["--config={bad}"], "SyntaxError: invalid syntax"),
    "misspelled": (["--config=configs/geometry_mlp_collapse.py", "--config.widht=3"],
                   "--config has no field 'widht'; did you mean 'width'?"),
    "moved_field": (["--config=configs/coco_caption.py:beam", "--config.max_steps=3"],
                    "--config has no field 'max_steps'; did you mean 'captioner.max_steps'?"),
    "nested_unknown": (["--config=configs/shapes_caption.py", "--config.captioner.steps=3"],
                       "no field 'captioner.steps'; did you mean 'captioner.max_steps'?"),
    "unknown_sub_config": (["--config=configs/coco_t2i.py", "--config.nosuch.x=1"],
                           "no field 'nosuch.x'; the config has ['data', 'eval', 'experiment',"),
    "unparsable": (["--config=configs/geometry_mlp_collapse.py", "--config.depth=abc"],
                   "flag --config.depth=abc: invalid literal for int()"),
    "unknown_variant": (["--config=configs/geometry_mlp_collapse.py:fast"],
                        "unknown variant 'fast' of geometry_mlp_collapse"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_command_line_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    """main.py's flag parsing (in-process: what ``python -m c3_jax.main`` runs first) ends
    with exit status 2 and one 'error:' line."""
    from absl import flags
    from c3_jax import main
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("C3_DEBUG", raising=False)
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    args, message = CLI_ERRORS[case]
    args = [a.format(bad=tmp_path / "bad.py") for a in args]
    argv = ["main", *args, f"--workdir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", argv)  # where ml_collections looks for --config.* flags
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_:
        main.parse_flags(argv)
    flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "run").exists()


def _cli(*args, **kw):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JAX_")}, **CACHE_ENV,
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "c3_jax.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _last_line(proc, timeout=120) -> tuple:
    _, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


@pytest.mark.slow
def test_the_command_refuses_a_foreign_workdir_with_one_line(tmp_path):
    _hf_checkpoint(tmp_path / "hf")
    before = snapshot(tmp_path)
    status, line = _last_line(_cli("--config=configs/geometry_mlp_collapse.py",
                                   f"--workdir={tmp_path / 'hf'}"))
    assert status == 2 and line.startswith(f"error: --workdir {tmp_path / 'hf'} is not a c3-jax")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sigterm_ends_with_one_line_and_a_resumable_workdir(tmp_path):
    workdir = tmp_path / "run"
    proc = _cli("--config=configs/geometry_synthetic.py:quick", f"--workdir={workdir}")
    deadline = time.time() + 120
    while not (workdir / "config.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    status, line = _last_line(proc)
    assert status == 128 + signal.SIGTERM, line
    assert line.startswith("error: interrupted (SIGTERM); the same command resumes the run in")
    assert ownership(str(workdir), []) == "ours" and not (workdir / ".lock").exists()
    assert not [p for p in workdir.rglob("*orbax-checkpoint-tmp*")]


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    from c3_jax.experiments import checks
    from conftest import GPT_WORDS, gpt2_dir
    gpt2_dir(tmp_path / "gpt2")
    checks.tokenizer_fits(str(tmp_path / "gpt2"), "gpt2")  # the tokenizer saved with it fits
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "vocab_size": 5}))
    with pytest.raises(ValueError, match=f"has {len(GPT_WORDS)} tokens, over the model's "
                                         "vocab_size=5"):
        checks.tokenizer_fits(str(tmp_path / "gpt2"), "gpt2")


@pytest.mark.parametrize("config_file,fields,message", [
    ("shapes_caption", {"method": {"calibration_pairs": 600}},
     "'method.calibration_pairs' is 600 but the world has 500 val pairs"),
    ("shapes_caption", {"method": {"noise_rank": 65}},
     "'method.noise_rank' is 65 but the space has 64 dimensions"),
    ("shapes_t2i", {"method": {"calibration_pairs": 501}},
     "'method.calibration_pairs' is 501 but the world has 500 val pairs")])
def test_world_values_that_only_the_world_would_reveal_are_refused_first(
        config_file, fields, message, tmp_path):
    """Values whose conflict would surface only after the world and Connect are built."""
    import importlib
    config = importlib.import_module(f"configs.{config_file}").get_config()
    config = override(config, **fields)
    with pytest.raises(ValueError, match=message) as err:
        runner.run(config, str(tmp_path / "run"))
    assert message in _one_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigint_during_a_checkpoint_save_leaves_a_resumable_workdir(tmp_path, monkeypatch):
    """A real SIGINT delivered while step 2's asynchronous Orbax save is still in flight:
    the save finishes, no temporary folder is left, and the rerun resumes at step 2 and
    ends equal to a run that was never interrupted."""
    import jax
    from c3_jax import main, progress
    from c3_jax.train import checkpoints, connect
    from c3_jax.workdir import Workdir
    from conftest import tiny_connect
    wd = Workdir(str(tmp_path / "run"))
    model, pairs = tiny_connect(wd)
    cfg = connect.ConnectConfig(steps=4, batch_size=32, lr=1e-3, warmup_steps=0, log_every=1,
                                checkpoint_every=2)
    save, in_flight = checkpoints.Checkpoints.save, []

    def save_then_interrupt(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == 2:
            in_flight.append(any("tmp" in n for n in os.listdir(self.latest.directory)))
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises KeyboardInterrupt here
    monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_interrupt)
    monkeypatch.setattr(progress, "RECEIVED", [])
    previous = signal.signal(signal.SIGINT, main.interrupt)  # as a run installs it (pytest-
    try:                                                     # xdist workers ignore SIGINT)
        with pytest.raises(KeyboardInterrupt):
            connect.train(model, pairs, cfg, wd, wd.file("checkpoints"))
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(progress, "RECEIVED", [])
    monkeypatch.setattr(checkpoints.Checkpoints, "save", save)
    assert in_flight == [True] or in_flight == [False]  # usually True: it was still writing
    assert not list((tmp_path / "run").rglob("*orbax-checkpoint-tmp*"))
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints" / "latest")) == ["2"]
    resumed = connect.train(model, pairs, cfg, wd, wd.file("checkpoints"))
    straight = connect.train(model, pairs, cfg, Workdir(str(tmp_path / "straight")),
                             str(tmp_path / "straight" / "checkpoints"))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_signal_whose_interrupt_was_swallowed_ends_the_next_progress_step(monkeypatch):
    """The handler's KeyboardInterrupt can land in a garbage-collection callback, where
    Python ignores it: the next step of any progress bar (iterated or updated) raises it."""
    from c3_jax import main, progress
    monkeypatch.setattr(progress, "RECEIVED", [])
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        main.interrupt(signal.SIGTERM, None)
    steps = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        for i in progress.progress_bar(range(3)):
            steps.append(i)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), progress.progress_bar(total=3) as bar:
        bar.update(1)
    assert steps == []
    # Inside a garbage-collection callback the handler only records the signal (an
    # exception there would be printed with its traceback and ignored).
    monkeypatch.setattr(progress, "RECEIVED", [])
    seen = []
    callback = lambda phase, info: seen.append(main.interrupt(signal.SIGINT, sys._getframe()))
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen and progress.RECEIVED == ["SIGINT"] * len(seen)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        progress.raise_if_interrupted()


def test_a_renamed_experiment_names_its_new_name():
    from configs import coco_t2i
    config = override(coco_t2i.get_config(), experiment="generate")
    with pytest.raises(runner.ConfigError) as err:
        runner.resolve(config)
    assert _one_line(err) == ("experiment 'generate' is now 't2i' (named after its module); set "
                              "experiment='t2i'")
    assert coco_t2i.get_config().experiment == "t2i"


@pytest.mark.parametrize("config_file,fields", [
    ("shapes_caption", {"method": {"variant": "c1"}}),
    ("shapes_sigma_sweep", {"method": {"sigma_from_calibration": True}}),
    ("shapes_t2i", {"method": {"variant": "c2_collapse"}}),
    ("coco_caption_sweep", {"method": {"sigma_from_calibration": True}})])
def test_sweeps_refuse_the_single_run_fields_they_do_not_read(config_file, fields, tmp_path):
    """A sweep's members take their variants from sweep.variants: a changed method.variant
    or method.sigma_from_calibration would be silently ignored, so it is refused first."""
    import importlib
    config = override(importlib.import_module(f"configs.{config_file}").get_config(), **fields)
    (name, value), = fields["method"].items()
    message = f"'method.{name}' is {value!r}; a sweep does not read it"
    with pytest.raises((ValueError, runner.ConfigError), match=message) as err:
        runner.run(config, str(tmp_path / "run"))
    assert message in _one_line(err) and "sweep.variants" in _one_line(err)
    assert not (tmp_path / "run").exists()
