"""Captioners trained as one sweep: the member axis changes nothing (each member equals the
same captioner run alone, a sweep of one, through the 'caption' experiment's path; the
members in turn equal them vmapped), and a killed sweep resumes bitwise."""
import functools
import json

import jax
import numpy as np
import pytest

from c3_jax import parallel, runner
from c3_jax.experiments import caption
from c3_jax.train import caption_sweep, captioning
from c3_jax.workdir import Workdir
from conftest import caption_config, count_calls, override, run_script, latest_state

MEMBERS = [caption_sweep.Member("c3_seed0", "c3", 0, 0.1),
           caption_sweep.Member("supervised_seed1", "c1", 1, 0.1, "image_embedding"),
           caption_sweep.Member("span_only_seed2", "span_only", 2, 0.2),
           caption_sweep.Member("c3_aniso_seed0", "c3_aniso", 0, 0.15),
           caption_sweep.Member("c3_standardize_seed1", "c3_standardize", 1, 0.1),
           caption_sweep.Member("realign_seed0", "realign", 0, 0.1),
           caption_sweep.Member("capdec_offset_seed2", "capdec_offset", 2, 0.1),
           caption_sweep.Member("decap_seed1", "decap", 1, 0.1)]


@pytest.mark.slow
def test_a_member_trained_in_a_sweep_equals_it_run_alone(caption_world, tmp_path, monkeypatch):
    """... and the step is traced once for the sweep and once for the runs alone (they
    differ in data only: compiled once per setting), once more for c3_aniso's (its
    settings hold the noise model's directions: arrays of other shapes)."""
    jax.clear_caches()
    traces = count_calls(monkeypatch, caption_sweep, "member_step")
    config = caption_config(caption_world,
                            captioner=dict(max_steps=8, checkpoint_every=8, val_batches=1))
    sweep = caption_sweep.Sweep(config, MEMBERS, Workdir(str(tmp_path / "sweep")))
    params, summary = caption_sweep.train(sweep)
    params = jax.tree.map(np.asarray, params)
    captions = caption_sweep.generate(sweep, params, _test_embeddings(caption_world))
    for k, m in enumerate(MEMBERS):
        alone_config = override(config, seed=m.seed,
                                method={"variant": m.variant, "noise_sigma": m.sigma},
                                data={"train_field": m.train_field})
        run = caption.single_run(alone_config, Workdir(str(tmp_path / m.name)))
        alone, alone_summary = caption.train_or_restore(run)
        _assert_params_equal(jax.tree.map(lambda a: a[k], params),
                             jax.tree.map(lambda a: a[0], alone), m.name)
        for key in ("final_loss", "val_loss"):
            np.testing.assert_allclose(summary[m.name][key], alone_summary[key], rtol=1e-5)
        assert captions[k] == caption_sweep.generate(
            run, alone, _test_embeddings(caption_world))[0], m.name
    assert len(traces) == 3
    rows = [json.loads(line) for line in open(tmp_path / "sweep" / "metrics.jsonl")]
    assert all(f"loss/{m.name}" in rows[0] for m in MEMBERS)
    assert any(f"val_loss/{m.name}" in r for r in rows for m in MEMBERS)


@pytest.mark.slow
def test_members_in_turn_equal_the_members_vmapped(caption_world, tmp_path):
    """The two ways a device runs its members (``parallel.over_members``: in turn on
    CPU, vmapped on accelerators) give the same steps, validation NLLs and captions, with
    the members split over the 2 devices (a shard_map over 'data' when in turn)."""
    config = caption_config(caption_world, captioner=dict(max_steps=2))
    sweep = caption_sweep.Sweep(config, MEMBERS[:4], Workdir(str(tmp_path / "sweep")))
    assert sweep.mesh.shape["data"] == 2
    assert caption_sweep.members_in_turn()  # CPU: what the other tests run
    tx = captioning.make_optimizer(config, config.captioner.max_steps)
    abstract = jax.eval_shape(lambda: caption_sweep.stacked_init(sweep.model, tx, sweep.dim)(
        sweep.seeds, None))
    shardings = parallel.member_shardings(sweep.mesh, abstract)
    settings = parallel.put_members(sweep.mesh, sweep.settings)
    seeds = parallel.put_members(sweep.mesh, sweep.seeds)
    rng = np.random.default_rng(0)
    n, b, t = len(sweep.seeds), config.captioner.batch_size, config.data.max_caption_tokens
    batch = {"embedding": rng.normal(size=(n, b, sweep.dim)).astype(np.float32),
             "ids": rng.integers(1, 10, (n, b, t)).astype(np.int32),
             "mask": np.ones((n, b, t), np.int32)}
    batch = jax.device_put(batch, parallel.member_batch_sharding(sweep.mesh))
    out = {}
    for in_turn in (True, False):
        state = caption_sweep.initial_states(
            sweep.seeds, None, model=sweep.model, tx=tx, dim=sweep.dim, with_best=False,
            mode="min", shardings=parallel.TreeShardings.of(shardings))
        step = functools.partial(caption_sweep.sweep_step, model=sweep.model, tx=tx,
                                 shardings=parallel.TreeShardings.of(shardings),
                                 skip_nonfinite=False, loss_chunk=0, in_turn=in_turn)
        for _ in range(2):
            state, metrics = step(state, batch, settings, seeds)
        nll = caption_sweep.member_nll(state.params, batch, settings, model=sweep.model,
                                       loss_chunk=0, mesh=sweep.mesh, in_turn=in_turn)
        out[in_turn] = jax.tree.map(np.asarray, (state.params, metrics, nll))
    _assert_params_equal(out[True][0], out[False][0], "in turn vs vmapped")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), out[True][1:],
                 out[False][1:])
    embeddings = _test_embeddings(caption_world)
    params = jax.tree.map(jax.numpy.asarray, out[True][0])
    in_turn = caption_sweep.generate(sweep, params, embeddings)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(caption_sweep, "members_in_turn", lambda: False)
        assert caption_sweep.generate(sweep, params, embeddings) == in_turn


def _assert_params_equal(got, want, name):
    """rtol 1e-5, except the attention key biases: softmax is invariant to adding one
    constant to a query's logits, so their gradient is 0 in exact arithmetic and both runs
    hold Adam-normalized rounding noise there (|value| ~1e-6); those must only stay tiny."""
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                            jax.tree.leaves(want)):
        where = f"{name} {jax.tree_util.keystr(path)}"
        if "k_proj" in where and "bias" in where:
            assert np.abs(a).max() < 1e-4 and np.abs(np.asarray(b)).max() < 1e-4, where
        else:
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-7, err_msg=where)


def _test_embeddings(world):
    from c3_jax.data import builders
    from c3_jax.data import captions as cd
    source = builders.data_source(world["dataset"], "test")
    return cd.eval_rows(source, "image_embedding", "caption")[0]


@pytest.mark.slow
def test_a_killed_sweep_resumes_bitwise(caption_world, tmp_path):
    """Killed after its step-4 checkpoint and run again, a sweep (on two devices: the
    members split over them) ends with the uninterrupted sweep's state, best params
    included."""
    config = override(caption_config(caption_world, captioner=dict(
                          max_steps=8, checkpoint_every=4, val_batches=1)),
                      experiment="caption_sweep",
                      sweep={"variants": ("c1", "c3", "supervised"), "seeds": 1, "sigmas": ()},
                      eval={"spice": False})
    runner.run(config, str(tmp_path / "straight"))  # this process: 2 devices too
    killed = run_script(config, str(tmp_path / "killed"), kill_at=4, devices=2)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_script(config, str(tmp_path / "killed"), kill_at=-1, devices=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, step_a = latest_state(str(tmp_path / "straight"))
    b, step_b = latest_state(str(tmp_path / "killed"))
    assert step_a == step_b == 8
    jax.tree.map(np.testing.assert_array_equal, a, b)
    results = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert results["members"]["c3_seed0"]["resumed_from"] == 4
    assert sorted(results["by_variant"]) == ["c1", "c3", "supervised"]
