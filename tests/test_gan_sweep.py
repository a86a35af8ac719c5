"""The text-to-image trainer's member axis changes nothing: in a sweep of two generators
(the tests' 2 devices split the members, each member's batch whole on its device) a member
gets the parameters, losses, images and scores it gets trained alone (a sweep of one: its
batch split over the 2 devices). Resuming is test_generation's (one trainer); images from
the test images' own embeddings take the training condition."""
import json

import jax
import numpy as np
import pytest

from c3_jax.train import gan_sweep, generation
from c3_jax.workdir import Workdir
from configs import coco_t2i
from conftest import latest_state, override, t2i_config

@pytest.mark.slow
def test_a_sweep_of_two_equals_each_member_as_a_sweep_of_one(t2i_reference, tmp_path):
    """The reference run (test_generation's: the config's c3 generator as a single run, a
    sweep of one) beside another member in one sweep, where it sits on the second device:
    the same parameters, losses, images and scores."""
    config, reference = t2i_reference
    alone = gan_sweep.config_member(config)
    other = gan_sweep.Member("c3_aniso_seed1", "c3_aniso", 1, 0.2, config.data.train_field)
    sweep = gan_sweep.GanSweep(config, [other, alone], Workdir(str(tmp_path / "sweep")))
    assert sweep.layout.split and len(sweep.padded) == 2
    ema, summary = gan_sweep.train(sweep)
    state, step = latest_state(str(tmp_path / "sweep"))
    want, want_step = latest_state(str(reference))
    assert step == want_step == config.generator.max_steps
    for part in ("g_params", "d_params", "ema"):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state[part])[0],
                                jax.tree.leaves(want[part])):
            np.testing.assert_allclose(a[1], b[0], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{part}{jax.tree_util.keystr(path)}")
    results = json.loads((reference / "results.json").read_text())
    for key in ("g_loss", "d_adv", "r1"):
        np.testing.assert_allclose(summary[alone.name]["final_metrics"][key],
                                   results["final_metrics"][key], rtol=1e-5, atol=1e-7)
    got = gan_sweep.evaluate(sweep, ema)[alone.name]
    images = np.load(reference / "generated_test.npy")
    assert np.abs(got["images"].astype(int) - images.astype(int)).max() <= 1
    for key in ("clip_score", "clip_frechet_distance"):
        np.testing.assert_allclose(got["metrics"][key], results["metrics"][key], rtol=1e-4)
    assert got["metrics"]["fid_protocol"] == results["metrics"]["fid_protocol"]


def test_lazy_regularization_phases():
    """LAFITE's lazy R1 and path-length steps, and none at weight 0 (no program compiled)."""
    config = override(coco_t2i.get_config(), generator={"r1_every": 2, "pl_every": 3})
    assert [generation.regs_at(config, i) for i in range(4)] == [
        (True, True), (False, False), (False, True), (True, False)]
    config = override(config, generator={"r1_gamma": 0.0, "pl_weight": 0.0})
    assert not any(any(generation.regs_at(config, i)) for i in range(4))


@pytest.mark.slow
def test_images_from_the_test_images_take_the_training_condition_without_noise(t2i_world,
                                                                                tmp_path):
    """``from_images``: each member conditioned on the test images' own embeddings through
    its training transform, noise left out. For Collapse (and Collapse + Corrupt) that is
    the image embedding less the image mean: what the text path gives when its eval field
    is the image field (its collapse mean is then the image mean). Untrained generators
    suffice; the member's latents are the same on both paths. (With the C^3 code's double
    image-mean subtraction, ``generator.collapse_twice``, the training condition is not
    that: off.)"""
    members = [gan_sweep.Member("c2_collapse_seed0", "c2_collapse", 0, 0.0),
               gan_sweep.Member("c3_seed1", "c3", 1, 0.3)]
    config = t2i_config(t2i_world, generator=dict(collapse_twice=False),
                        eval=dict(fid_protocol="paired"))
    image_eval = override(config, data={"eval_field": "image_embedding"})
    sweeps = [gan_sweep.GanSweep(c, members, Workdir(str(tmp_path / name)))
              for name, c in (("a", config), ("b", image_eval))]
    s = sweeps[0]
    ema = jax.jit(gan_sweep.stacked_init, static_argnums=(1, 2, 3))(s.seeds, s.gen, s.disc,
                                                                     s.tx).ema
    got = gan_sweep.evaluate(sweeps[0], ema, from_images=True)
    want = gan_sweep.evaluate(sweeps[1], ema)
    text = gan_sweep.evaluate(sweeps[0], ema)
    for m in members:
        np.testing.assert_array_equal(got[m.name]["images"], want[m.name]["images"])
        assert np.abs(got[m.name]["images"].astype(int)
                      - text[m.name]["images"].astype(int)).max() > 0, m.name
