"""The text-to-image trainer's member axis changes nothing: a sweep of two generators (lazy
R1 steps included; the tests' 2 devices split the members, each member's batch whole on its
device) gives each member the parameters, losses, images and scores it gets trained alone
(a sweep of one: its batch split over the 2 devices). Resuming is test_generation's (one
trainer); images from the test images' own embeddings take the training condition."""
import jax
import numpy as np

from c3_jax.train import gan_sweep
from c3_jax.workdir import Workdir
from conftest import override, t2i_config

MEMBERS = [gan_sweep.Member("c3_standardize_seed0", "c3_standardize", 0, 0.1),
           gan_sweep.Member("c3_aniso_seed1", "c3_aniso", 1, 0.2)]


def test_a_sweep_of_two_equals_each_member_as_a_sweep_of_one(t2i_world, tmp_path):
    # "paired": each row's first caption against the same rows' images.
    config = t2i_config(t2i_world, max_steps=4, checkpoint_every=4, r1_every=2,
                        fid_protocol="paired")
    sweep = gan_sweep.GanSweep(config, MEMBERS, Workdir(str(tmp_path / "sweep")))
    assert sweep.layout.split and len(sweep.padded) == 2
    ema, summary = gan_sweep.train(sweep)
    ema = jax.tree.map(np.asarray, ema)
    results = gan_sweep.evaluate(sweep, ema)
    # The second member alone (every setting differs from the first's; it sits on the
    # second device): one alone run, as the first member's would repeat the check.
    k, m = 1, MEMBERS[1]
    alone = gan_sweep.GanSweep(config, [m], Workdir(str(tmp_path / m.name)), sweep.encoder)
    assert not alone.layout.split
    alone_ema, alone_summary = gan_sweep.train(alone)
    rows = Workdir(str(tmp_path / m.name)).read_metrics()
    assert [r["r1"] > 0 for r in rows] == [True, False] * 2  # lazy R1 every 2 steps, logged
    assert not any("/" in key for key in rows[0] if not key.startswith("time/"))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ema)[0],
                            jax.tree.leaves(alone_ema)):
        np.testing.assert_allclose(a[k], np.asarray(b)[0], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{m.name} {jax.tree_util.keystr(path)}")
    for key in ("g_loss", "d_adv", "r1"):
        np.testing.assert_allclose(summary[m.name]["final_metrics"][key],
                                   alone_summary[m.name]["final_metrics"][key],
                                   rtol=1e-5, atol=1e-7)
    want = gan_sweep.evaluate(alone, alone_ema)[m.name]
    assert np.abs(results[m.name]["images"].astype(int)
                  - want["images"].astype(int)).max() <= 1, m.name
    np.testing.assert_allclose(results[m.name]["metrics"]["clip_score"],
                               want["metrics"]["clip_score"], rtol=1e-4)
    assert results[m.name]["metrics"]["fid_protocol"] == want["metrics"]["fid_protocol"] == (
        "paired: 8 images from the first caption of the first 8 'test' rows, vs those rows' "
        "8 images")


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
    config = t2i_config(t2i_world, collapse_twice=False, fid_protocol="paired")
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
