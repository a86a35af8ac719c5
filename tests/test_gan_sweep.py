"""Text-to-image generators trained as one vmapped sweep (lazy R1 steps included; the
tests' 8 devices split the members): each member equals the same generator trained alone,
images and scores included."""
import jax
import numpy as np

from c3_jax.train import gan_sweep, generation
from c3_jax.workdir import Workdir
from conftest import override, t2i_config

MEMBERS = [gan_sweep.Member("c3_seed0", "c3", 0, 0.1),
           gan_sweep.Member("span_only_seed1", "span_only", 1, 0.2)]


def test_a_generator_trained_in_a_sweep_equals_it_trained_alone(t2i_world, tmp_path):
    config = t2i_config(t2i_world, max_steps=4, checkpoint_every=4, r1_every=2)
    sweep = gan_sweep.GanSweep(config, MEMBERS, Workdir(str(tmp_path / "sweep")))
    ema, summary = gan_sweep.train(sweep)
    ema = jax.tree.map(np.asarray, ema)
    results = gan_sweep.evaluate(sweep, ema)
    for k, m in enumerate(MEMBERS):
        alone_config = override(config, variant=m.variant, seed=m.seed, noise_sigma=m.sigma)
        run = generation.Run(alone_config, Workdir(str(tmp_path / m.name)), sweep.encoder)
        alone, alone_summary = generation.train(run)
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
