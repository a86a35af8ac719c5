"""Text-to-image generators trained as one sweep (lazy R1 steps included; the tests' 2
devices split the members): each member equals the same generator trained alone, images
and scores included, and a sweep that crashed after a checkpoint resumes bitwise."""
import json

import jax
import numpy as np
import pytest

from c3_jax.train import checkpoints, gan_sweep, generation
from c3_jax.workdir import Workdir
from conftest import override, t2i_config

MEMBERS = [gan_sweep.Member("c3_standardize_seed0", "c3_standardize", 0, 0.1),
           gan_sweep.Member("c3_aniso_seed1", "c3_aniso", 1, 0.2)]


def _crash_after_step(monkeypatch, step: int) -> None:
    """Checkpoints.save raises once the checkpoint of ``step`` is on disk (a crash)."""
    save = checkpoints.Checkpoints.save

    def save_then_crash(self, at, *args, **kwargs):
        save(self, at, *args, **kwargs)
        if at == step:
            self.wait()
            raise RuntimeError("crashed")
    monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_crash)


def test_a_generator_trained_in_a_sweep_equals_it_trained_alone(t2i_world, tmp_path,
                                                                monkeypatch):
    # "paired": the sweep's images are from each row's first caption, as the run alone's then.
    config = t2i_config(t2i_world, max_steps=4, checkpoint_every=4, r1_every=2,
                        fid_protocol="paired")
    sweep = gan_sweep.GanSweep(config, MEMBERS, Workdir(str(tmp_path / "sweep")))
    ema, summary = gan_sweep.train(sweep)
    ema = jax.tree.map(np.asarray, ema)
    # Crashed after its step-2 checkpoint and run again: bitwise the uninterrupted sweep.
    cut = override(config, checkpoint_every=2)
    with monkeypatch.context() as m:
        _crash_after_step(m, 2)
        with pytest.raises(RuntimeError, match="crashed"):
            gan_sweep.train(gan_sweep.GanSweep(cut, MEMBERS, Workdir(str(tmp_path / "cut"))))
    resumed, resumed_summary = gan_sweep.train(
        gan_sweep.GanSweep(cut, MEMBERS, Workdir(str(tmp_path / "cut"))))
    assert resumed_summary[MEMBERS[0].name]["resumed_from"] == 2
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, np.asarray(b))
    results = gan_sweep.evaluate(sweep, ema)
    # The second member alone (every setting differs from the first's; it sits on the
    # second device): one alone run, as the first member's would repeat the check.
    k, m = 1, MEMBERS[1]
    alone_config = override(config, variant=m.variant, seed=m.seed, noise_sigma=m.sigma)
    run = generation.Run(alone_config, Workdir(str(tmp_path / m.name)), sweep.encoder)
    alone, alone_summary = generation.train(run)
    rows = [json.loads(line) for line in open(tmp_path / m.name / "metrics.jsonl")]
    assert [r["r1"] > 0 for r in rows] == [True, False] * 2  # lazy R1 every 2 steps, logged
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ema)[0],
                            jax.tree.leaves(alone)):
        np.testing.assert_allclose(a[k], np.asarray(b), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{m.name} {jax.tree_util.keystr(path)}")
    for key in ("g_loss", "d_adv", "r1"):
        np.testing.assert_allclose(summary[m.name]["final_metrics"][key],
                                   alone_summary["final_metrics"][key], rtol=1e-5, atol=1e-7)
    want = generation.evaluate(run, alone)
    assert np.abs(results[m.name]["images"].astype(int)
                  - want["images"].astype(int)).max() <= 1, m.name
    np.testing.assert_allclose(results[m.name]["metrics"]["clip_score"],
                               want["metrics"]["clip_score"], rtol=1e-4)


def test_images_from_the_test_images_take_the_training_condition_without_noise(t2i_world,
                                                                                tmp_path):
    """``from_images``: each member conditioned on the test images' own embeddings through
    its training transform, noise left out. For Collapse (and Collapse + Corrupt) that is
    the image embedding less the image mean: what the text path gives when its eval field
    is the image field (its collapse mean is then the image mean). Untrained generators
    suffice; the member's latents are the same on both paths. (With the C^3 code's double
    image-mean subtraction, ``collapse_twice``, the training condition is not that: off.)"""
    members = [gan_sweep.Member("c2_collapse_seed0", "c2_collapse", 0, 0.0),
               gan_sweep.Member("c3_seed1", "c3", 1, 0.3)]
    config = t2i_config(t2i_world, collapse_twice=False)
    image_eval = override(config, eval_field="image_embedding")
    sweeps = [gan_sweep.GanSweep(c, members, Workdir(str(tmp_path / name)))
              for name, c in (("a", config), ("b", image_eval))]
    ema = jax.jit(sweeps[0].stacked_init)(sweeps[0].seeds).ema
    got = gan_sweep.evaluate(sweeps[0], ema, from_images=True)
    want = gan_sweep.evaluate(sweeps[1], ema)
    text = gan_sweep.evaluate(sweeps[0], ema)
    for m in members:
        np.testing.assert_array_equal(got[m.name]["images"], want[m.name]["images"])
        assert np.abs(got[m.name]["images"].astype(int)
                      - text[m.name]["images"].astype(int)).max() > 0, m.name
