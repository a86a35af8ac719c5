"""C^3 captioning: a ClipCap prefix captioner trained on one modality's embeddings (text,
for uni-modal training) and evaluated on another's (images, audio, video).

The C^3 transform runs inside one sharded, jitted train step; checkpoints hold the
state, the data-iterator position and (through the step) the noise RNG, so a run
resumes exactly.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from c3_jax import c3, parallel
from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.data.text import load_tokenizer
from c3_jax.eval.caption_metrics import score_captions
from c3_jax.models import checkpoint, clipcap, decoding, gpt2
from c3_jax.progress import progress_bar
from c3_jax.train import checkpoints, loop
from c3_jax.train import state as st
from c3_jax.workdir import Workdir

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------
# Model and optimizer


def build_module(config):
    """The ClipCap module and GPT-2's pretrained params (None when trained from scratch)."""
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype={config.dtype!r}; expected one of {sorted(DTYPES)}")
    dtype = DTYPES[config.dtype]
    if config.gpt2_from_scratch:
        hf = checkpoint.read_config(config.gpt2)
        gpt_config, gpt_params = gpt2.GPT2Config.from_hf(hf), None
    else:
        gpt_module, gpt_params = gpt2.from_pretrained(config.gpt2, dtype)
        gpt_config = gpt_module.config
    mapper = clipcap.MapperConfig(config.mapper, config.prefix_length, config.clip_length,
                                  config.mapper_depth)
    return clipcap.ClipCap(mapper, gpt_config, dtype), gpt_params


def init_params(model: clipcap.ClipCap, key, dim: int):
    """Randomly initialized params of the whole captioner (mapper and GPT-2)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return model.init(key, jnp.zeros((1, dim)), ids, jnp.ones_like(ids))["params"]


def trainable_of(config, params) -> dict:
    return {"mapper": jax.tree.map(lambda _: True, params["mapper"]),
            "gpt": jax.tree.map(lambda _: not config.freeze_gpt, params["gpt"])}


def build_model(config, dim: int):
    """The ClipCap module, its initial params (GPT-2 pretrained unless from scratch) and
    which params train."""
    model, gpt_params = build_module(config)
    params = jax.jit(functools.partial(init_params, model, dim=dim))(jax.random.key(config.seed))
    if gpt_params is not None:
        params = {**params, "gpt": gpt_params}
    return model, params, trainable_of(config, params)


def warmup_steps_of(config) -> int:
    """The run's warmup updates: ``warmup_steps``, times ``train_fraction`` when
    ``warmup_scales_with_fraction`` (the official stage-2 ``run.py``: int(5000 * fraction))."""
    if config.warmup_scales_with_fraction:
        return int(config.warmup_steps * config.train_fraction)
    return config.warmup_steps


def schedule_of(config, total_updates: int) -> optax.Schedule:
    """The learning rate per update: ClipCap's linear warmup then linear decay to 0
    ('warmup_linear_decay'), or ``lr`` throughout ('constant': no scheduler, as the
    official ImageBind config)."""
    if config.lr_schedule == "constant":
        return optax.constant_schedule(config.lr)
    return st.warmup_linear_decay(config.lr, warmup_steps_of(config), total_updates)


def make_optimizer(config, total_updates: int, trainable) -> optax.GradientTransformation:
    return st.adamw(schedule_of(config, total_updates), config.weight_decay,
                    trainable if config.freeze_gpt else None, config.grad_accum)


# ---------------------------------------------------------------------------
# Jitted steps


def train_update(model: clipcap.ClipCap, tx, state, batch: dict, embed: Callable,
                 skip_nonfinite: bool, loss_chunk: int):
    """One AdamW update on the masked caption loss of ``embed(batch['embedding'])`` (the LM
    head over caption positions only, in chunks); returns (state, metrics)."""
    def loss_fn(params):
        return model.apply({"params": params}, embed(batch["embedding"]), batch["ids"],
                           batch["mask"], loss_chunk, method="caption_nll")

    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads)}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return st.guard_finite(new, state, metrics, skip_nonfinite)


def make_train_step(model: clipcap.ClipCap, tx, mesh, state_sharding,
                    skip_nonfinite: bool = False, loss_chunk: int = 0):
    """One sharded step: the method's training transform of the batch (``c3.member_train``
    with the settings as arrays), then ``train_update``."""
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def step(state: st.TrainState, batch: dict, settings: dict, key):
        rng = jax.random.fold_in(key, state.step)
        embed = lambda e: c3.member_train(settings, e, rng)
        return train_update(model, tx, state, batch, embed, skip_nonfinite, loss_chunk)

    batch_sh = parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(state_sharding, batch_sh, repl, repl),
                   out_shardings=(state_sharding, repl), donate_argnums=0)


def make_eval_loss(model: clipcap.ClipCap, mesh, loss_chunk: int = 0):
    """Summed caption NLL and token count of a batch (no noise), for validation."""
    def fn(params, batch, settings):
        e = c3.member_train(settings, batch["embedding"])
        loss, count = model.apply({"params": params}, e, batch["ids"], batch["mask"],
                                  loss_chunk, method="caption_nll")
        return loss * count, count

    return jax.jit(fn, in_shardings=(None, parallel.batch_sharding(mesh), None))


# ---------------------------------------------------------------------------
# Training


class Run:
    """What training and evaluation share: config, mesh, data sources, tokenizer, model."""

    def __init__(self, config, wd: Workdir):
        self.config, self.wd = config, wd
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.make_mesh(config.fsdp)
        self.train_source = builders.data_source(config.dataset_dir, config.train_split)
        rows = (None if config.train_fraction >= 1 else
                cd.fraction_rows(len(self.train_source), config.train_fraction, config.seed))
        self.tokenizer = load_tokenizer(config.gpt2)
        self.pairs = self.caption_pairs(self.train_source, config.train_field, rows)
        self.model, self.params, self.trainable = build_model(config, self.pairs.dim)
        c3.check_method(config.variant)
        self._moments = {}  # field -> c3.Moments of the training split

    def moments(self, field: str) -> c3.Moments:
        """Per-dimension mean and std of ``field`` over the whole training split (its mean is
        Algorithm 1's), computed once per run."""
        if field not in self._moments:
            self._moments[field] = cd.field_moments(self.train_source, field)
        return self._moments[field]

    def settings(self, method: str, sigma: float, train_field: str,
                 noise: Optional[dict] = None) -> dict:
        """``c3.member_settings`` of a method trained on ``train_field`` and met with the
        config's ``eval_field`` at inference."""
        train, evaluation = self.moments(train_field), self.moments(self.config.eval_field)
        centroid = cd.method_centroid(method, self.train_source, train_field, train, evaluation)
        return c3.member_settings(method, sigma, train, evaluation, noise,
                                  self.config.renormalize, centroid)

    def caption_pairs(self, source, field: str, rows=None) -> cd.CaptionPairs:
        """(embedding, tokenized caption) pairs of a split."""
        return cd.CaptionPairs(source, field, self.config.caption_field, rows).tokenize(
            self.tokenizer, self.config.max_caption_tokens, self.config.truncate_captions)

    def own_settings(self) -> dict:
        """The settings of the config's own method, sigma and training field."""
        config = self.config
        return self.settings(config.variant, cd.config_sigma(config), config.train_field,
                             cd.noise_model(config) if config.variant == "c3_aniso" else None)

    def memory(self) -> np.ndarray:
        """decap's memory: the training split's ``train_field`` embeddings."""
        return cd.field_rows(self.train_source, self.config.train_field,
                             self.config.decap_memory)


def total_steps(config, num_pairs: int) -> int:
    """Micro-steps of the run: ``max_steps``, or ``num_epochs`` over the pairs."""
    return config.max_steps if config.max_steps > 0 else (
        config.num_epochs * (num_pairs // config.batch_size))


def _loader(pairs, local_batch: int, seed: int, epochs=None, shuffle=True):
    return pipeline.make_loader(pairs, local_batch, seed, shuffle=shuffle, num_epochs=epochs)


def _validation_loss(run: Run, params, eval_loss, settings) -> Optional[float]:
    config = run.config
    if config.val_batches <= 0 or not config.val_split:
        return None
    source = builders.data_source(config.dataset_dir, config.val_split)
    pairs = run.caption_pairs(source, config.train_field)
    batch = min(config.batch_size, len(pairs) // jax.device_count() * jax.device_count())
    if batch == 0:
        return None
    loader = _loader(pairs, batch // jax.process_count(), 0, epochs=1, shuffle=False)
    total, count = 0.0, 0.0
    for i, local in enumerate(loader):
        if i >= config.val_batches:
            break
        batch = pipeline.global_batch(local, parallel.batch_sharding(run.mesh))
        s, c = eval_loss(params, batch, settings)
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)


def validation_rouge_l(run: Run, params) -> Optional[float]:
    """ROUGE-L of the captions of the first ``val_decode_examples`` val rows' ``eval_field``
    embeddings (the official stage 2 keeps its best checkpoint by val ROUGE-L of 1,000 val
    images)."""
    config = run.config
    if not config.val_split:
        return None
    source = builders.data_source(config.dataset_dir, config.val_split)
    embeddings, refs = cd.eval_rows(source, config.eval_field, config.caption_field,
                                    config.val_decode_examples)
    captions = generate(run, params, embeddings, run.own_settings())
    return score_captions(dict(enumerate(captions)), dict(enumerate(refs)), spice=False,
                          meteor=False)["ROUGE-L"]


def validation_of(run: Run, eval_loss, settings) -> Callable:
    """The value ``best/`` keeps the best of: val loss (lowest) or val ROUGE-L (highest)."""
    if run.config.best_by == "val_rouge_l":
        return lambda s: validation_rouge_l(run, s.params)
    return lambda s: _validation_loss(run, s.params, eval_loss, settings)


def initial_state(run: Run, tx, shardings) -> st.TrainState:
    params = run.params
    if run.config.init_from:
        params = restore_run_params(run, run.config.init_from)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return st.TrainState(step, params, opt_state)


def state_shardings(run: Run, tx):
    abstract = jax.eval_shape(lambda p: st.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                              run.params)
    return abstract, parallel.state_shardings(run.mesh, abstract)


def train(run: Run) -> tuple:
    """Trains (or resumes) in ``run.wd``; returns (params, training summary)."""
    config, wd = run.config, run.wd
    local_batch = parallel.local_batch_size(config.batch_size, len(run.pairs), "training pairs")
    steps = total_steps(config, len(run.pairs))
    tx = make_optimizer(config, max(steps // config.grad_accum, 1), run.trainable)
    abstract, shardings = state_shardings(run, tx)
    settings = run.own_settings()
    step_fn = make_train_step(run.model, tx, run.mesh, shardings, config.skip_nonfinite,
                              config.loss_chunk)
    eval_loss = make_eval_loss(run.model, run.mesh, config.loss_chunk)
    data = iter(_loader(run.pairs, local_batch, config.seed))
    ckpts = checkpoints.Checkpoints(wd.file("checkpoints"), config.keep_checkpoints,
                                    "max" if config.best_by == "val_rouge_l" else "min")
    state, start = ckpts.resume_or_init(abstract, shardings, data,
                                        lambda: initial_state(run, tx, shardings))
    key = jax.random.key(config.seed)
    schedule = schedule_of(config, max(steps // config.grad_accum, 1))
    state, last, val = loop.fit(
        state, start, lambda s, batch, i: step_fn(s, batch, settings, key), data,
        parallel.batch_sharding(run.mesh), ckpts, wd,
        loop.LoopConfig(steps, config.log_every, config.checkpoint_every,
                        config.skip_nonfinite, val_name=config.best_by),
        learning_rate=lambda i: schedule(i // config.grad_accum),
        validate=validation_of(run, eval_loss, settings))
    summary = {"steps": steps, "resumed_from": start, "train_pairs": len(run.pairs),
               **({"final_loss": last["loss"]} if "loss" in last else {}),
               **{k: last[k] for k in ("seconds_per_step", "skipped_nonfinite_steps")
                  if k in last},
               **({config.best_by: val} if val is not None else {})}
    return state.params, summary


def restore_run_params(run: Run, run_dir: str):
    """Params of another run's checkpoint (its best by validation, else its latest)."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ directory; pass the --workdir "
                                "of a finished captioning run")
    tx = make_optimizer(run.config, 1, run.trainable)
    abstract, shardings = state_shardings(run, tx)
    return checkpoints.restore_params(directory, checkpoints.abstract(abstract, shardings))


# ---------------------------------------------------------------------------
# Decoding and evaluation


def stop_ids(tokenizer, at_period: bool) -> tuple:
    stops = [tokenizer.eos_token_id]
    if at_period:
        period = tokenizer(".", add_special_tokens=False)["input_ids"]
        if len(period) == 1:
            stops.append(period[0])
    return tuple(sorted(set(stops)))


def decode_text(tokenizer, tokens: np.ndarray, stops: tuple) -> str:
    tokens = list(tokens)
    for i, t in enumerate(tokens):
        if t in stops:
            tokens = tokens[:i + (t != tokenizer.eos_token_id)]  # keep '.', drop EOS
            break
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def generate(run: Run, params, embeddings: np.ndarray, settings: dict,
             shift: Optional[np.ndarray] = None, marks: Optional[list] = None) -> list:
    """Captions of raw ``embeddings`` [n, d]: the method's inference transform
    (``c3.member_eval`` with ``settings``; decap's projection onto ``run.memory()``), an
    optional constant ``shift``, the mapper, then decoding. ``marks`` gets (batch, time) as
    each batch's tokens reach the host."""
    config = run.config
    decoder = gpt2.GPT2(run.model.gpt, run.model.dtype)
    stops = stop_ids(run.tokenizer, config.stop_at_period)
    shift = jnp.zeros(embeddings.shape[1]) if shift is None else jnp.asarray(shift)
    memory = None  # decap's memory, put on the devices once (not with every batch)
    if settings["project"] > 0:
        repl = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
        memory = parallel.put_whole(run.memory(), repl)

    def prefix(p, s, e, memory):
        projected = (None if memory is None else
                     c3.project_to_memory(e, memory, config.decap_temperature))
        return run.model.apply({"params": p}, c3.member_eval(s, e, projected) + shift,
                               method="prefix")
    prefix_fn = jax.jit(prefix)
    decode = make_decoder(config, decoder, stops, run.tokenizer.eos_token_id)
    sharding = parallel.batch_sharding(run.mesh)
    batch, n, out = eval_batch(config), len(embeddings), []
    for start in progress_bar(range(0, n, batch), desc="captions", unit="batch", leave=False):
        chunk = embeddings[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        e = parallel.put_whole(padded, sharding)
        tokens = parallel.to_host(decode(params["gpt"], prefix_fn(params, settings, e,
                                                                  memory)))[:len(chunk)]
        out.extend(decode_text(run.tokenizer, row, stops) for row in tokens)
        if marks is not None:
            marks.append((len(marks) + 1, time.perf_counter()))
    return out


def eval_batch(config) -> int:
    n = jax.device_count()
    return max(n, config.eval_batch_size // n * n)


def make_decoder(config, module: gpt2.GPT2, stops: tuple, pad_id: int):
    if config.decode == "greedy":
        return lambda p, prefix: decoding.greedy(module, p, prompt_embeds=prefix,
                                                 max_new_tokens=config.max_decode_tokens,
                                                 stop_ids=stops, pad_id=pad_id)
    if config.decode == "beam":
        return lambda p, prefix: decoding.beam_search(
            module, p, prompt_embeds=prefix, beam_size=config.beam_size,
            max_new_tokens=config.max_decode_tokens, stop_ids=stops, pad_id=pad_id)[0]
    raise ValueError(f"decode={config.decode!r}; expected 'greedy' or 'beam'")


def evaluate(run: Run, params) -> dict:
    """Captions the test split's ``eval_field`` embeddings (through the method's inference
    transform) and scores them against the references."""
    config = run.config
    source = builders.data_source(config.dataset_dir, config.test_split)
    embeddings, refs = cd.eval_rows(source, config.eval_field, config.caption_field,
                                    config.eval_max_examples)
    check_width(embeddings, run.pairs.dim, config.eval_field)
    marks = []
    captions = generate(run, params, embeddings, run.own_settings(), marks=marks)
    metrics = score_captions(dict(enumerate(captions)), dict(enumerate(refs)),
                             spice=config.spice, meteor=config.meteor)
    run.wd.write_json("captions_test.json", [{"prediction": c, "references": r}
                                            for c, r in zip(captions, refs)])
    return {"metrics": metrics, "num_test": len(captions),
            **loop.pace(marks, "decode_batch"),
            "samples": [{"prediction": c, "reference": r[0]} for c, r in
                        zip(captions[:5], refs[:5])]}


def check_width(embeddings: np.ndarray, dim: int, field: str) -> None:
    if embeddings.shape[1] != dim:
        raise ValueError(f"{field!r} embeddings are {embeddings.shape[1]}-d but the captioner "
                         f"was built for {dim}-d training embeddings")
