"""The captioner end to end on a tiny fake COCO: extraction -> text-only training ->
image evaluation -> metrics; exact resume after SIGKILL (device and process counts:
test_multiprocess)."""
import json

import jax
import numpy as np
import pytest

from c3_jax import c3, parallel, runner
from c3_jax.models import clipcap, gpt2
from c3_jax.train import caption_sweep, captioning
from c3_jax.train import state as st
from configs import coco_caption
from conftest import (CAPTION_REFERENCE, caption_config, checkpoint_params, cli, latest_state,
                      override, run_script)


def _changed_flags(config, default, prefix="") -> list:
    """--config.<path>=<value> of every field of ``config`` (nested: by its dotted path)
    whose value differs from ``default``'s, the experiment's name left out."""
    flags = []
    for k, v in config.items():
        if k == "experiment" and not prefix:
            continue
        if hasattr(v, "items"):
            flags += _changed_flags(v, default[k], f"{prefix}{k}.")
        elif v != default[k]:
            flags.append(f"--config.{prefix}{k}={v}")
    return flags


@pytest.fixture(scope="module")
def trained(caption_reference):
    """The text-only C3 reference run on the tiny caption_world: (its workdir, its results)."""
    workdir = caption_reference[1]
    return workdir, json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_text_only_training_then_image_captions_and_restore_for_eval(caption_world, trained, tmp_path):
    train_dir, results = trained
    metrics = results["metrics"]
    for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert np.isfinite(metrics[key]), key
    assert "SPICE_skipped" in metrics
    steps = CAPTION_REFERENCE["captioner"]["max_steps"]
    assert results["num_test"] == 2 and results["steps"] == steps
    rows = [json.loads(line) for line in open(train_dir / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == steps and losses[-1] < losses[0]
    assert any("val_loss" in r for r in rows)
    assert (train_dir / "loss.png").exists()
    state, _ = latest_state(str(train_dir))  # the best params by val loss, beside the last
    assert state["best_value"].shape == (1,) and np.isfinite(state["best_value"]).all()
    captions = json.loads((train_dir / "captions_test.json").read_text())
    # Evaluation only, from the trained run's checkpoint, by the command line: same captions.
    again = override(caption_config(caption_world, **CAPTION_REFERENCE),
                     captioner={"restore_from": str(train_dir)})
    out = cli("--config=configs/coco_caption.py:c3", f"--workdir={tmp_path / 'eval'}",
               *_changed_flags(again, coco_caption.get_config("c3")))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "captions_test.json").read_text()) == captions
    assert not (tmp_path / "eval" / "checkpoints").exists()


@pytest.mark.slow
def test_finetune_starts_from_the_text_run_on_a_fraction_of_image_pairs(caption_world, trained,
                                                                       tmp_path):
    train_dir, _ = trained
    # lr 0: the fine-tuned params must be exactly the text-trained run's best params.
    config = caption_config(caption_world, "finetune", data=dict(train_fraction=0.5),
                            captioner=dict(init_from=str(train_dir), lr=0.0, max_steps=2,
                                           checkpoint_every=2),
                            eval=dict(max_examples=1))
    results = runner.run(config, str(tmp_path / "ft"))
    assert results["train_pairs"] == 6 * 5  # half of the 12 training images, 5 captions each
    best = latest_state(str(train_dir))[0]["best"]
    got, _ = checkpoint_params(str(tmp_path / "ft"))
    for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.slow
def test_finetune_keeps_the_checkpoint_of_the_best_val_rouge_l(caption_world, trained, tmp_path):
    train_dir, _ = trained
    config = caption_config(caption_world, "finetune", data=dict(train_fraction=0.5),
                            captioner=dict(init_from=str(train_dir), max_steps=6,
                                           checkpoint_every=2, val_decode_examples=2),
                            eval=dict(max_examples=1))
    results = runner.run(config, str(tmp_path / "ft"))
    rows = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
    scores = {r["step"]: r["val_rouge_l"] for r in rows if "val_rouge_l" in r}
    assert sorted(scores) == [2, 4, 6] and all(0 <= v <= 1 for v in scores.values())
    assert results["val_rouge_l"] == scores[6]
    state, _ = latest_state(str(tmp_path / "ft"))  # the best is the highest
    assert state["best_value"][0] == pytest.approx(max(scores.values()), rel=1e-6)


@pytest.mark.slow
def test_an_older_single_run_checkpoint_gives_its_best_params(caption_world, trained, tmp_path):
    """init_from and restore_from read the layout of single runs before they were sweeps
    of one (a TrainState without a member axis, the best in checkpoints/best/) as they read
    the new one (the best params in the state)."""
    from c3_jax.experiments import caption
    from c3_jax.train import checkpoints
    from c3_jax.workdir import Workdir
    import orbax.checkpoint as ocp
    train_dir, _ = trained
    state, step = latest_state(str(train_dir))
    one = lambda tree: jax.tree.map(lambda a: a[0], tree)
    old = checkpoints.Checkpoints(str(tmp_path / "old" / "checkpoints"))
    last = jax.tree.map(np.zeros_like, one(state["params"]))  # not the best: not restored
    old.save(step, st.TrainState(np.int32(step), last, one(state["opt_state"])))
    old.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(st.TrainState(
        np.int32(step), one(state["best"]), one(state["opt_state"])))), metrics={"value": 1.0})
    old.wait()
    old.close()
    sweep = caption.single_run(caption_config(caption_world, **CAPTION_REFERENCE),
                               Workdir(str(tmp_path / "eval")))
    for run in (tmp_path / "old", train_dir):
        got = caption_sweep.restore_params(sweep, str(run))
        for a, b in zip(jax.tree.leaves(state["best"]), jax.tree.leaves(got)):
            np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("chunk", [0, 1, 3, 64])
@pytest.mark.slow
def test_chunked_caption_nll_equals_the_full_logits_loss_and_gradients(chunk):
    """The train step's loss (LM head over caption positions only, in chunks) against the
    loss of the whole [B, P + L, V] logits: equal values and gradients."""
    gpt = gpt2.GPT2Config(vocab_size=50, max_positions=32, width=16, depth=2, heads=2)
    model = clipcap.ClipCap(clipcap.MapperConfig("mlp", 3), gpt)
    rng = np.random.default_rng(1)
    e = rng.normal(size=(4, 6)).astype(np.float32)
    ids = rng.integers(0, 50, size=(4, 7)).astype(np.int32)
    mask = (np.arange(7)[None] < np.array([[7], [5], [2], [6]])).astype(np.int32)
    params = jax.jit(model.init)(jax.random.key(0), e, ids, mask)["params"]
    full = lambda p: clipcap.caption_loss(model.apply({"params": p}, e, ids, mask), ids, mask, 3)
    chunked = lambda p: model.apply({"params": p}, e, ids, mask, chunk, method="caption_nll")
    # Jitted: one program each (op by op, chunk 3 took 22 s of the suite; 12 s jitted).
    (want, n_want), g_want = jax.jit(jax.value_and_grad(full, has_aux=True))(params)
    (got, n_got), g_got = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
    assert float(n_got) == float(n_want) == mask.sum()
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # The decoder's prompt pass: logits of the last position only, equal to the full pass's.
    last = model.apply({"params": params}, e, ids, mask, head_from=3 + 6)
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(
        model.apply({"params": params}, e, ids, mask)[:, -1]), rtol=1e-6, atol=1e-6)


def test_caption_loss_is_masked_next_token_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3 + 4, 5)).astype(np.float32)
    ids = rng.integers(0, 5, size=(2, 4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, count = clipcap.caption_loss(logits, ids, mask, prefix_length=3)
    want, n = 0.0, 0
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                row = logits[b, 3 - 1 + t].astype(np.float64)
                want -= row[ids[b, t]] - np.log(np.exp(row).sum())
                n += 1
    assert int(count) == n
    np.testing.assert_allclose(float(loss), want / n, rtol=1e-5)


@pytest.mark.slow
def test_killed_while_saving_resumes_bitwise(caption_reference, tmp_path):
    """SIGKILL as the step-10 checkpoint is being written (then the step-5 one is the latest
    complete) or just after: the restart ends with the uninterrupted reference run's whole
    state, best params included, and losses (on 2 devices; METEOR off in the restart). A
    kill after a finished save: test_caption_sweep."""
    config, straight = caption_reference
    config = override(config, eval={"meteor": False})
    want, step = latest_state(str(straight))
    every = config.captioner.checkpoint_every
    losses = lambda d: [(r.get("loss"), r.get("val_loss"))
                        for r in map(json.loads, open(d / "metrics.jsonl"))]
    killed = run_script(config, str(tmp_path / "killed"), kill_at=2 * every, devices=2,
                        mid_save=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = run_script(config, str(tmp_path / "killed"), kill_at=-1, devices=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Killed while step 10 was still being written: its unfinished directory is ignored.
    writing = (tmp_path / "killed.mid_save").read_text() == "1"
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["resumed_from"] == (
        every if writing else 2 * every)
    got, step2 = latest_state(str(tmp_path / "killed"))
    assert step == step2 == config.captioner.max_steps
    jax.tree.map(np.testing.assert_array_equal, want, got)
    assert losses(tmp_path / "killed") == losses(straight)


@pytest.mark.parametrize("module,variants", [
    ("coco_caption", ["", "c1", "c2_collapse", "c2_corrupt", "span_only", "supervised",
                      "finetune", "transformer,beam", "c1,beam", "c3_calibrated", "c3_aniso",
                      "c3_standardize", "std_match", "realign", "capdec_offset",
                      "decap,beam"]),
    ("imagebind_caption", ["audio", "video,c1", "image,c2_corrupt"]),
    ("caption_gap_sensitivity", [""]),
    ("coco_caption_sweep", ["", "supervised", "supervised,sigma"])])
def test_every_caption_config_variant_validates(module, variants):
    import importlib
    for v in variants:
        runner.resolve(importlib.import_module(f"configs.{module}").get_config(v))
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        importlib.import_module(f"configs.{module}").get_config("nope")


def test_calibrated_variants_take_sigma_from_the_calibration():
    from configs import coco_caption
    for name, method in (("c3_calibrated", "c3"), ("c3_aniso", "c3_aniso")):
        c = coco_caption.get_config(name)
        assert c.method.variant == method and c.method.sigma_from_calibration
    assert not coco_caption.get_config("c3_standardize").method.sigma_from_calibration


@pytest.mark.slow
def test_gap_sensitivity_reports_scores_per_gap_distance(caption_world, scorer, tmp_path):
    from configs import caption_gap_sensitivity
    c = caption_gap_sensitivity.get_config()
    c.update(dict(data=dict(dataset_dir=caption_world["dataset"], max_caption_tokens=12),
                  captioner=dict(gpt2=caption_world["gpt2"], batch_size=8, max_steps=4,
                                 warmup_steps=1, lr=1e-3, log_every=2, checkpoint_every=4,
                                 val_batches=0),
                  eval=dict(max_decode_tokens=8, batch_size=8, spice=False),
                  gap=dict(shift_norms=(0.0, 1.0), shift_gamma=0.9)))
    results = runner.run(c, str(tmp_path / "gap"), scorer=scorer)
    rows = results["by_gap_distance"]
    assert set(rows) == {"0", "1"}
    for row in rows.values():
        assert all(0 <= row[m] <= 1 for m in ("ROUGE-1", "ROUGE-L", "METEOR"))
    assert (tmp_path / "gap" / "gap_sensitivity.png").exists()


@pytest.mark.slow
def test_imagebind_audio_captioning_from_precomputed_embeddings(caption_world, scorer, tmp_path):
    from c3_jax.data import builders
    from configs import imagebind_caption
    rng = np.random.default_rng(0)
    words = ["rain falls .", "a dog barks .", "the wind .", "a red car ."]
    splits, captions = {}, {}
    for split, n in (("train", 16), ("test", 4)):
        splits[split] = {"text_embedding": rng.normal(size=(n, 24)).astype(np.float32),
                         "audio_embedding": rng.normal(size=(n, 24)).astype(np.float32)}
        captions[split] = [words[i % 4] for i in range(n)]
    dataset = builders.build_pairs_dataset("clotho_imagebind", str(tmp_path / "data"), splits,
                                           captions)
    c = imagebind_caption.get_config("audio")
    c.update(dict(data=dict(dataset_dir=dataset, val_split="", max_caption_tokens=8),
                  captioner=dict(gpt2=caption_world["gpt2"], batch_size=8, max_steps=4,
                                 warmup_steps=1, log_every=2, checkpoint_every=4, val_batches=0),
                  eval=dict(max_decode_tokens=6, batch_size=8, spice=False)))
    results = runner.run(c, str(tmp_path / "run"), scorer=scorer)
    assert results["num_test"] == 4 and np.isfinite(results["metrics"]["BLEU-1"])
    assert results["train_pairs"] == 16


def _tiny_step_setup(accumulate, dtype="float32", batch=8):
    """The trainer's jitted step (a sweep of one member) on a tiny captioner: (step, state,
    data, settings, seeds, put: a batch with its member axis, placed)."""
    gpt = gpt2.GPT2Config(vocab_size=20, max_positions=16, width=16, depth=1, heads=2)
    model = clipcap.ClipCap(clipcap.MapperConfig("mlp", 2), gpt,
                            captioning.DTYPES[dtype])
    rng = np.random.default_rng(0)
    data = {"embedding": rng.normal(size=(batch, 6)).astype(np.float32),
            "ids": rng.integers(0, 20, size=(batch, 5)).astype(np.int32),
            "mask": np.ones((batch, 5), np.int32)}
    params = model.init(jax.random.key(0), data["embedding"], data["ids"], data["mask"])["params"]
    tx = st.adamw(st.warmup_linear_decay(1e-2, 1, 10), 0.01, accumulate=accumulate)
    mesh = parallel.member_mesh(1)
    state = jax.vmap(lambda p: caption_sweep.initial_state(tx, p))(
        jax.tree.map(lambda a: a[None], params))
    step = caption_sweep.compiled_step(model, tx, parallel.member_shardings(mesh, state))
    flat = c3.Moments(np.zeros(6, np.float32), np.ones(6, np.float32))
    settings = caption_sweep.stack_settings([c3.member_settings("c3", 0.0, flat, flat)])
    sharding = parallel.member_batch_sharding(mesh)
    put = lambda d: {k: parallel.put_whole(v[None], sharding) for k, v in d.items()}
    return step, state, data, settings, np.zeros(1, np.uint32), put


@pytest.mark.slow
def test_gradient_accumulation_equals_one_large_batch():
    big, state, data, settings, seeds, put = _tiny_step_setup(1, batch=16)
    want, _ = big(state, put(data), settings, seeds)
    small, state2, _, _, _, _ = _tiny_step_setup(2, batch=16)
    half = lambda i: {k: v[i * 8:(i + 1) * 8] for k, v in data.items()}
    mid, _ = small(state2, put(half(0)), settings, seeds)
    fresh = _tiny_step_setup(2, batch=16)[1]  # state2 was donated
    for a, b in zip(jax.tree.leaves(mid.params), jax.tree.leaves(fresh.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # no update after 1 of 2
    got, _ = small(mid, put(half(1)), settings, seeds)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_step_keeps_float32_params_and_close_loss():
    losses = {}
    for dtype in ("float32", "bfloat16"):
        step, state, data, settings, seeds, put = _tiny_step_setup(1, dtype)
        new, metrics = step(state, put(data), settings, seeds)
        assert all(p.dtype == np.float32 for p in jax.tree.leaves(new.params))
        losses[dtype] = float(metrics["loss"][0])
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.02 * losses["float32"]


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(caption_world, tmp_path):
    import re
    # lr 1e30: the first update blows the weights up, a later loss overflows.
    config = caption_config(caption_world,
                            captioner=dict(lr=1e30, warmup_steps=1, max_steps=8,
                                           checkpoint_every=1, val_batches=0),
                            eval=dict(max_examples=1))
    with pytest.raises(FloatingPointError,
                       match="non-finite loss or gradients of member\\(s\\) c3 at step") as err:
        runner.run(config, str(tmp_path / "stop"))
    bad = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    state, last = latest_state(str(tmp_path / "stop"))
    assert 1 <= last == bad - 1 and f"step {last}" in str(err.value)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(state["params"]))
    assert not (tmp_path / "stop" / "results.json").exists()
    # skip_nonfinite: the same run goes on, dropping every non-finite update; as most of
    # its steps were skipped, it ends with an error and no results.
    config.captioner.skip_nonfinite = True
    with pytest.raises(FloatingPointError, match=f"{8 - bad + 1} of the 8 steps run by "
                       "member\\(s\\) c3 had non-finite loss or gradients and were skipped"):
        runner.run(config, str(tmp_path / "skip"))
    assert not (tmp_path / "skip" / "results.json").exists()
    rows = [json.loads(x) for x in open(tmp_path / "skip" / "metrics.jsonl") if "loss" in x]
    assert [r["nonfinite"] for r in rows][: bad - 1] == [0] * (bad - 1)
    assert rows[bad - 1]["nonfinite"] == 1
    state, last = latest_state(str(tmp_path / "skip"))
    assert last == 8 and all(np.isfinite(a).all() for a in jax.tree.leaves(state["params"]))


def test_skipped_steps_are_counted_and_a_mostly_skipped_run_is_an_error():
    from c3_jax.train import loop
    watch = st.NonFiniteWatch(("a", "b"))
    for step, bad in enumerate([[0, 1], [0, 1], [1, 0], [0, 0]], 1):
        watch.update({"nonfinite": jax.numpy.asarray(bad, "int32")}, step)
    cfg = loop.LoopConfig(4, 1, 4, True, members=("a", "b"))
    got = loop.skipped_steps(watch, cfg, 0)
    assert got == {"skipped_nonfinite_steps": 3, "skipped_nonfinite_steps/a": 1,
                   "skipped_nonfinite_steps/b": 2}
    watch.update({"nonfinite": jax.numpy.asarray([0, 1], "int32")}, 5)
    with pytest.raises(FloatingPointError, match="3 of the 5 steps run by member\\(s\\) b"):
        loop.skipped_steps(watch, loop.LoopConfig(5, 1, 5, True, members=("a", "b")), 0)
