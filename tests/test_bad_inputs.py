"""The bad-input matrix: each bad input stops with a message naming the field, file or shape,
and leaves what is already on disk unchanged."""
import hashlib
import json
import os

import numpy as np
import pytest

from c3_jax import main, runner
from c3_jax.data import builders
from c3_jax.data.text import encode_captions
from test_generation import tiny_config, world  # noqa: F401 (fixture)


def _snapshot(root) -> dict:
    """Every file under ``root`` with the hash of its bytes."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            out[os.path.relpath(path, root)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return out


def test_nan_or_inf_embeddings_are_refused_before_anything_is_written(tmp_path):
    for bad in (np.nan, np.inf):
        e = np.ones((4, 3), np.float32)
        e[2, 1] = bad
        with pytest.raises(ValueError, match="array 'text_embedding' contains NaN or Inf"):
            builders.build_pairs_dataset("bad", str(tmp_path), {"train": {"text_embedding": e}})
    assert not os.path.exists(tmp_path / "bad" / "1.0.0")


def test_empty_and_over_long_captions(world):  # noqa: F811
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(world["clip"])
    with pytest.raises(ValueError, match="caption 1 is empty"):
        encode_captions(tok, ["a red circle", "  "], 8)
    with pytest.raises(ValueError, match="caption 0 has 5 tokens with EOS, over max_length=3"):
        encode_captions(tok, ["a red circle on"], 3)


def test_a_dataset_missing_a_split_names_the_splits_it_has(world, tmp_path):  # noqa: F811
    with pytest.raises(KeyError, match="has no split 'val'; it has \\['test', 'train'\\]"):
        builders.data_source(world["dataset"], "val")
    with pytest.raises(FileNotFoundError, match="dataset directory .* does not exist"):
        builders.data_source(str(tmp_path / "nowhere"), "train")


def test_embedding_width_that_does_not_match_the_encoder(world, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    split = {"image": rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8),
             "image_embedding": rng.normal(size=(8, 5)).astype(np.float32),
             "text_embedding": rng.normal(size=(8, 2, 5)).astype(np.float32)}
    captions = [["a", "b"]] * 8
    data = builders.build_pairs_dataset("narrow", str(tmp_path / "data"),
                                        {"train": split, "test": split},
                                        {"train": captions, "test": captions})
    with pytest.raises(ValueError, match="gives 16-d embeddings but 'image_embedding' is 5-d"):
        main.run(tiny_config(world, dataset_dir=data), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_unknown_or_mistyped_config_fields(world, tmp_path):  # noqa: F811
    config = tiny_config(world)
    config.unlock()
    config.lerning_rate = 1e-3
    with pytest.raises(runner.ConfigError, match="\\['lerning_rate'\\] are not used"):
        main.run(config, str(tmp_path / "a"))
    import ml_collections
    config = ml_collections.ConfigDict({**tiny_config(world).to_dict(), "batch_size": "eight"})
    with pytest.raises(runner.ConfigError, match="'batch_size' must be int, got str 'eight'"):
        main.run(config, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a" / "config.json")


def test_a_workdir_holding_another_run_and_bad_checkpoints_are_left_as_they_are(
        world, tmp_path):  # noqa: F811
    workdir = tmp_path / "run"
    main.run(tiny_config(world, max_steps=2, checkpoint_every=2), str(workdir))
    before = _snapshot(workdir)
    with pytest.raises(runner.ConfigError, match="holds a run of another config "
                       "\\(fields \\['lr'\\] differ\\)"):
        main.run(tiny_config(world, max_steps=2, checkpoint_every=2, lr=1.0), str(workdir))
    assert _snapshot(workdir) == before
    # A checkpoint of another architecture: evaluation from it names the mismatch.
    other = tiny_config(world, channel_max=16, restore_from=str(workdir))
    with pytest.raises(ValueError, match="(?i)shape"):
        main.run(other, str(tmp_path / "eval_other"))
    # A corrupt checkpoint (a truncated array file): restoring fails loudly.
    latest = workdir / "checkpoints" / "latest" / "2" / "state"
    victims = [os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs
               if f not in ("_METADATA", "_CHECKPOINT_METADATA", "_sharding", "manifest.ocdbt")]
    assert victims
    for v in victims:
        with open(v, "r+b") as f:
            f.truncate(max(os.path.getsize(v) // 2, 1))
    with pytest.raises(Exception):
        main.run(tiny_config(world, restore_from=str(workdir)), str(tmp_path / "eval_bad"))
    assert json.loads((workdir / "config.json").read_text())["lr"] == tiny_config(world).lr
