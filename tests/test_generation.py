"""The text-to-image experiment ('t2i': a sweep of one generator) end to end on a tiny
dataset with a tiny Hugging Face CLIP: image-only training -> generation from text ->
metrics; restore-for-eval with FID / IS; exact resume after a crash; non-finite losses
(device and process counts, the shapes_t2i ':quick' run: test_multiprocess; the member
axis: test_gan_sweep)."""
import json

import jax
import numpy as np
import pytest

from c3_jax import runner
from c3_jax.data import builders
from c3_jax.train import checkpoints, gan_sweep
from configs import coco_t2i, shapes_t2i
from conftest import count_calls, latest_state, random_state_dict, t2i_config


@pytest.fixture(scope="module")
def trained(t2i_reference):
    """The image-only C3 reference run on the tiny t2i_world: (its workdir, its results)."""
    workdir = t2i_reference[1]
    return workdir, json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_image_only_training_then_generation_from_text(trained):
    train_dir, results = trained
    assert set(results) >= {"steps", "resumed_from", "train_images", "final_metrics",
                            "metrics", "variant"}
    metrics = results["metrics"]
    assert metrics["num_generated"] == 8
    assert np.isfinite(metrics["clip_frechet_distance"]) and metrics["clip_frechet_distance"] > 0
    assert -1 <= metrics["clip_score"] <= 1 and "FID_skipped" in metrics
    assert results["final_metrics"]["seconds_per_step"] > 0
    rows = [json.loads(x) for x in open(train_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r[k]) for r in rows for k in ("d_adv", "g_adv", "g_itc", "r1"))
    assert all(r["r1"] > 0 for r in rows)  # R1 on every step (lazy R1: test_gan_sweep)
    for name in ("samples.png", "losses.png", "config.json", "results.json"):
        assert (train_dir / name).exists(), name
    images = np.load(train_dir / "generated_test.npy")
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8


@pytest.mark.slow
def test_restore_for_eval_with_fid_and_inception_score(t2i_world, trained, tmp_path):
    """Evaluation only, from the trained run's EMA generator: its images again, and FID /
    IS as computed directly from them and, as LAFITE's protocol has it, every real
    training image."""
    import torch
    from c3_jax.eval import image_metrics as im
    from c3_jax.models import inception
    path = str(tmp_path / inception.WEIGHTS_FILE)
    torch.save(random_state_dict(), path)
    config = t2i_config(t2i_world, generator=dict(restore_from=str(trained[0])),
                        eval=dict(inception_weights=path))
    results = runner.run(config, str(tmp_path / "eval"))
    metrics = results["metrics"]
    assert results["restored_from"] == str(trained[0])
    fake = np.load(tmp_path / "eval" / "generated_test.npy")
    np.testing.assert_array_equal(fake, np.load(trained[0] / "generated_test.npy"))
    assert not (tmp_path / "eval" / "checkpoints").exists()
    fn = inception.make_feature_fn(*inception.load_fid_inception(path))
    train = builders.data_source(t2i_world["dataset"], "train")
    real = np.stack([np.asarray(train[i]["image"]) for i in range(len(train))])
    assert metrics["fid_protocol"] == ("lafite: 8 images from the first 8 'test' rows, one "
                                       "random caption each, vs 16 'train' images")
    (f_fake, logits), (f_real, _) = fn(fake), fn(real)
    want = im.frechet_distance_of_stats(im.FeatureStats().update(np.asarray(f_fake)),
                                        im.FeatureStats().update(np.asarray(f_real)))
    np.testing.assert_allclose(metrics["FID"], want, rtol=1e-6)
    np.testing.assert_allclose(metrics["IS"], im.inception_score(np.asarray(logits), 8)[0],
                               rtol=1e-6)
    assert "FID_skipped" not in metrics


@pytest.mark.slow
def test_crashed_after_a_checkpoint_resumes_bitwise(t2i_reference, tmp_path, monkeypatch):
    """A crash right after the step-3 checkpoint: the restart ends bitwise equal to the
    uninterrupted reference run (both on 2 devices), and does not trace the step again."""
    jax.clear_caches()
    traces = count_calls(monkeypatch, gan_sweep, "member_step")
    config, straight = t2i_reference
    every, save = config.generator.checkpoint_every, checkpoints.Checkpoints.save

    def save_then_crash(self, at, *args, **kwargs):
        save(self, at, *args, **kwargs)
        if at == every:
            self.wait()
            raise RuntimeError("crashed")
    with monkeypatch.context() as m:
        m.setattr(checkpoints.Checkpoints, "save", save_then_crash)
        with pytest.raises(RuntimeError, match="crashed"):
            runner.run(config, str(tmp_path / "cut"))
    assert runner.run(config, str(tmp_path / "cut"))["resumed_from"] == every
    assert len(traces) == 1
    want, step = latest_state(str(straight))
    got, step2 = latest_state(str(tmp_path / "cut"))
    assert step == step2 == config.generator.max_steps > every
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
    lines = lambda d: [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
                       for x in open(d / "metrics.jsonl")]  # wall times differ
    assert lines(tmp_path / "cut") == lines(straight)


@pytest.mark.slow
def test_lafite_protocol_draws_one_random_caption_per_row(t2i_world):
    """LAFITE's dataset get_txt_features: one of the row's captions at random."""
    from c3_jax.train import generation
    config = t2i_config(t2i_world, eval=dict(batch_size=3))
    test = builders.data_source(t2i_world["dataset"], "test")
    rng = np.random.default_rng(5)
    index = np.concatenate([rng.integers(0, 2, n) for n in (3, 3, 2)])
    assert 0 < index.sum() < 8  # both captions drawn
    got = list(generation.test_batches(config, pick=np.random.default_rng(5)))
    e = np.concatenate([b[0] for b in got])
    want = np.stack([np.asarray(test[i]["text_embedding"])[k] for i, k in enumerate(index)])
    np.testing.assert_array_equal(e, want)
    assert [c for b in got for c in b[2]] == [
        [f"a red circle {i}", f"a circle {i}"][k] for i, k in enumerate(index)]


def test_bad_inputs_get_clear_errors(t2i_world, tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        coco_t2i.get_config("nope")
    with pytest.raises(KeyError, match="no field 'pixels'"):
        runner.run(t2i_config(t2i_world, data=dict(image_field="pixels")), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="multiple of the 2 devices"):
        runner.run(t2i_config(t2i_world, generator=dict(batch_size=3, mbstd_group=1)),
                   str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        runner.run(t2i_config(t2i_world, generator=dict(restore_from=str(tmp_path))),
                   str(tmp_path / "c"))


def test_every_t2i_config_variant_validates():
    for v in ("", "c1", "c2_collapse", "c2_corrupt", "c3", "lafite", "c3_aniso",
              "c3_standardize"):
        runner.resolve(coco_t2i.get_config(v))
    runner.resolve(shapes_t2i.get_config())
    runner.resolve(shapes_t2i.get_config("quick"))


@pytest.mark.slow
def test_nonfinite_losses_stop_or_are_skipped(t2i_world, tmp_path):
    import os
    # lr 1e30 with Adam's beta1 = 0: the first D update already makes G's loss NaN.
    config = t2i_config(t2i_world, generator=dict(lr=1e30, max_steps=3, checkpoint_every=1))
    with pytest.raises(FloatingPointError, match="non-finite loss or gradients at step 1;"
                       ".*last checkpoint \\(none\\)"):
        runner.run(config, str(tmp_path / "stop"))
    assert not (tmp_path / "stop" / "results.json").exists()
    assert not os.listdir(tmp_path / "stop" / "checkpoints" / "latest")
    config.generator.skip_nonfinite = True  # every step is skipped: the initial state survives,
    with pytest.raises(FloatingPointError, match="3 of the 3 steps run"):  # and no results
        runner.run(config, str(tmp_path / "skip"))
    assert not (tmp_path / "skip" / "results.json").exists()
    state, last = latest_state(str(tmp_path / "skip"))
    assert last == 3 and all(np.isfinite(a).all() for a in jax.tree.leaves(state))
