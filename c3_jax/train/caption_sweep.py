"""A sweep of captioners trained as one program: the members (C^3 variant x seed x sigma x
training field) are stacked on a leading axis and trained by one ``jax.vmap``ped, jitted
step, with everything that differs between them passed as data: the collapse mean (zeros:
no collapse), sigma (0: no noise), the gap direction (span_only), the RNG key and the
embedding field each member reads. The member axis is split over the mesh's 'data' axis
(each member's batch over 'fsdp'), so several devices train several members at once.

A member ends with the parameters it would have trained alone (``captioning.train`` with
its seed, variant, sigma and field; tests check this), and decoding runs every member in
one batched program. Checkpoints hold the stacked state, each member's best params by
validation loss and every data stream's position, so a sweep resumes exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from c3_jax import c3, parallel
from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.data.text import load_tokenizer
from c3_jax.eval.caption_metrics import score_caption_sets
from c3_jax.models import gpt2
from c3_jax.progress import progress_bar
from c3_jax.train import captioning, checkpoints, loop
from c3_jax.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Member:
    """One captioner of a sweep; the sweep's config gives everything else."""
    name: str
    variant: str = "c3"  # one of c3.METHODS
    seed: int = 0
    sigma: float = c3.CLIP_SIGMA
    train_field: str = "text_embedding"


def member_grid(name: str, variant: str, field: str, sigmas: Sequence[float], first_seed: int,
                seeds: int, tag_sigma: bool) -> list:
    """The members ``name[_sigma<s>]_seed<k>`` of one variant: every sigma x seed."""
    return [Member(f"{name}{f'_sigma{sigma:g}' if tag_sigma else ''}_seed{first_seed + k}",
                   variant, first_seed + k, sigma, field)
            for sigma in sigmas for k in range(seeds)]


# The variant names configs use: (method, trained on the config's train_field or its
# eval_field, sigma: the config's or the calibrated one, ``captions.noise_model``'s).
NAMED = {**{m: (m, "train", "fixed") for m in c3.METHODS},
         "c3_calibrated": ("c3", "train", "calibrated"),
         "c3_aniso": ("c3_aniso", "train", "calibrated"),
         "supervised": ("c1", "eval", "fixed")}


def named_members(names: Sequence[str], config, sigmas: Sequence[float], calibrated,
                  tag_sigma: bool) -> list:
    """The members of the named variants (``NAMED``) x seeds of ``config`` (its seed, seeds,
    train_field and eval_field): noisy variants at each of ``sigmas``, calibrated ones at
    ``calibrated()`` (called only when needed), the others at ``config.noise_sigma``."""
    out = []
    for name in names:
        if name not in NAMED:
            raise ValueError(f"unknown variant {name!r}; known: {sorted(NAMED)}")
        method, on, kind = NAMED[name]
        field = config.train_field if on == "train" else config.eval_field
        values = ([calibrated()] if kind == "calibrated" else
                  list(sigmas) if method in c3.NOISY else [config.noise_sigma])
        out += member_grid(name, method, field, values, config.seed, config.seeds,
                           tag_sigma and kind == "fixed" and method in c3.NOISY)
    return out


@flax.struct.dataclass
class SweepState:
    """The stacked TrainState of the members, and each one's best params by validation
    (``best``/``best_value`` are None when the sweep validates nothing)."""
    step: jax.Array
    params: Any
    opt_state: Any
    best: Any = None
    best_value: Optional[jax.Array] = None


def check_members(members: Sequence[Member]) -> None:
    if not members:
        raise ValueError("a sweep needs at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep member names repeat: {names}")
    for m in members:
        c3.check_method(m.variant)


class Sweep:
    """What training and decoding of a sweep share: the config's shared settings (its
    ``seed``, ``variant``, ``noise_sigma`` and ``train_field`` are the members'), the mesh,
    the pairs of every field a member trains on, the model and the per-member settings."""

    def __init__(self, config, members: Sequence[Member], wd: Workdir):
        check_members(members)
        if config.train_fraction < 1:
            raise ValueError("a sweep trains on the whole split (train_fraction=1); train a "
                             "fraction's captioner alone")
        self.config, self.wd, self.members = config, wd, tuple(members)
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.member_mesh(len(members), config.fsdp)
        data = self.mesh.shape["data"]
        self.size = -(-len(members) // data) * data  # padded with copies of member 0
        self.padded = self.members + (self.members[0],) * (self.size - len(members))
        source = builders.data_source(config.dataset_dir, config.train_split)
        self.tokenizer = load_tokenizer(config.gpt2)
        fields = sorted({m.train_field for m in members})
        first = cd.CaptionPairs(source, fields[0], config.caption_field).tokenize(
            self.tokenizer, config.max_caption_tokens, config.truncate_captions)
        self.pairs = {f: first.with_field(f) for f in fields}
        self.dim = first.dim
        self.model, self.gpt_params = captioning.build_module(config)
        moments = {f: cd.field_moments(source, f) for f in {*fields, config.eval_field}}
        methods = {m.variant for m in members}
        noise = cd.noise_model(config) if "c3_aniso" in methods else None
        centroids = {f: cd.realign_centroid(source, f, moments[f], moments[config.eval_field])
                     for f in {m.train_field for m in members if m.variant == "realign"}}
        settings = [c3.member_settings(m.variant, m.sigma, moments[m.train_field],
                                       moments[config.eval_field], noise,
                                       centroid=centroids.get(m.train_field))
                    for m in self.padded]
        self.memory = None
        if "decap" in methods:
            if any(m.variant == "decap" and m.train_field != config.train_field
                   for m in members):
                raise ValueError(f"decap's memory is {config.train_field!r}; a decap member "
                                 "must train on it")
            self.memory = cd.field_rows(source, config.train_field, config.decap_memory)
        self.settings = {k: np.stack([s[k] for s in settings]) for k in settings[0]}
        self.seeds = np.asarray([m.seed for m in self.padded], np.uint32)


def member_step(model, tx, skip_nonfinite: bool = False, loss_chunk: int = 0):
    """The sweep's step, vmapped over members: (state, batch, settings, seed) -> (state,
    metrics), each with a leading member axis; a member's step is ``captioning``'s with the
    method's settings as arrays (``c3.member_train``)."""
    def step(state, batch, settings, seed):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        embed = lambda e: c3.member_train(settings, e, rng)
        return captioning.train_update(model, tx, state, batch, embed, skip_nonfinite,
                                       loss_chunk)

    return jax.vmap(step)


def stacked_init(model, tx, dim: int, with_best: bool = False):
    """(seeds [members], pretrained GPT-2 params or None) -> the stacked initial SweepState:
    each member's params from its own seed, as alone (pretrained GPT-2 shared by all)."""
    def init(seed, gpt_params):
        params = captioning.init_params(model, jax.random.key(seed), dim)
        if gpt_params is not None:
            params = {**params, "gpt": gpt_params}
        return SweepState(jnp.zeros((), jnp.int32), params, tx.init(params),
                          params if with_best else None,
                          jnp.asarray(jnp.inf, jnp.float32) if with_best else None)
    return jax.vmap(init, in_axes=(0, None))


def _validation(sweep: Sweep):
    """Per-member mean validation NLL ([members], no noise), as ``captioning`` computes it
    alone: the first ``val_batches`` batches of the val split in order."""
    config = sweep.config
    if config.val_batches <= 0 or not config.val_split:
        return None
    source = builders.data_source(config.dataset_dir, config.val_split)
    first = cd.CaptionPairs(source, next(iter(sweep.pairs)), config.caption_field).tokenize(
        sweep.tokenizer, config.max_caption_tokens, config.truncate_captions)
    val = {f: first.with_field(f) for f in sweep.pairs}
    batch = min(config.batch_size, len(next(iter(val.values()))) // jax.device_count()
                * jax.device_count())
    if batch == 0:
        return None
    fields = [m.train_field for m in sweep.padded]
    sharding = parallel.member_batch_sharding(sweep.mesh)

    def loss(params, batch, settings):
        e = c3.member_train(settings, batch["embedding"])
        nll, count = sweep.model.apply({"params": params}, e, batch["ids"], batch["mask"],
                                       config.loss_chunk, method="caption_nll")
        return nll * count, count
    loss = jax.jit(jax.vmap(loss))
    settings = parallel.put_members(sweep.mesh, sweep.settings)

    # Read once (into memory when it fits); each validation iterates from the start.
    readers = {f: pipeline.make_loader(p, batch, 0, shuffle=False, num_epochs=1,
                                       shard_index=0, shard_count=1) for f, p in val.items()}

    def validate(params) -> jax.Array:
        loaders = {f: iter(reader) for f, reader in readers.items()}
        total = count = 0.0
        for _ in range(config.val_batches):
            try:
                read = {f: next(it) for f, it in loaders.items()}
            except StopIteration:
                break
            stacked = {k: parallel.put_whole(np.stack([read[f][k] for f in fields]), sharding)
                       for k in ("embedding", "ids", "mask")}
            s, c = parallel.to_host(loss(params, stacked, settings))
            total, count = total + s.astype(np.float64), count + c.astype(np.float64)
        return total / np.maximum(count, 1.0)
    return validate


def _keep_best(sweep: Sweep, validate, last: dict):
    """At each checkpoint: validation losses, logged, kept in ``last`` and folded into each
    member's best params."""
    names = [m.name for m in sweep.members]
    member = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec("data"))

    @jax.jit
    def update(state, values):
        better = values < state.best_value
        pick = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return state.replace(best=jax.tree.map(pick, state.params, state.best),
                             best_value=jnp.where(better, values, state.best_value))

    def at_checkpoint(state):
        values = validate(state.params)
        state = update(state, parallel.put_whole(values.astype(np.float32), member))
        last.update({n: float(v) for n, v in zip(names, values)})
        return state, {f"val_loss/{n}": last[n] for n in names}
    return at_checkpoint


def train(sweep: Sweep) -> tuple:
    """Trains (or resumes) the sweep in ``sweep.wd``; returns (the members' last params,
    stacked, as ``captioning.train`` returns one's; {member: summary}). Each member's best
    params by validation are kept in the checkpoints (``best``)."""
    config, wd = sweep.config, sweep.wd
    pairs = len(next(iter(sweep.pairs.values())))
    split = sweep.mesh.shape["fsdp"]
    if config.batch_size % split or config.batch_size > pairs:
        raise ValueError(f"batch_size={config.batch_size} must be a multiple of the {split} "
                         f"devices each member is split over, and at most the {pairs} pairs")
    steps = captioning.total_steps(config, pairs)
    updates = max(steps // config.grad_accum, 1)
    trainable = captioning.trainable_of(
        config, jax.eval_shape(lambda k: captioning.init_params(sweep.model, k, sweep.dim),
                               jax.random.key(0)))
    tx = captioning.make_optimizer(config, updates, trainable)
    validate = _validation(sweep)
    init = stacked_init(sweep.model, tx, sweep.dim, validate is not None)
    seeds = parallel.put_members(sweep.mesh, sweep.seeds)
    abstract = jax.eval_shape(init, seeds, sweep.gpt_params)
    shardings = parallel.member_shardings(sweep.mesh, abstract)
    settings = parallel.put_members(sweep.mesh, sweep.settings)
    step_fn = jax.jit(member_step(sweep.model, tx, config.skip_nonfinite, config.loss_chunk),
                      donate_argnums=0,
                      out_shardings=(shardings, None))
    sharding = parallel.member_batch_sharding(sweep.mesh)
    data = pipeline.MemberBatches(
        [f"{m.seed}/{m.train_field}" for m in sweep.padded],
        [sweep.pairs[m.train_field] for m in sweep.padded], [m.seed for m in sweep.padded],
        config.batch_size, ("embedding", "ids", "mask"),
        lambda a: parallel.put_whole(a, sharding))
    ckpts = checkpoints.Checkpoints(wd.file("checkpoints"), config.keep_checkpoints)
    state, start = ckpts.resume_or_init(
        abstract, shardings, data,
        lambda: jax.jit(init, out_shardings=shardings)(seeds, sweep.gpt_params))
    schedule = captioning.schedule_of(config, updates)
    names, val = tuple(m.name for m in sweep.members), {}
    state, last, _ = loop.fit(
        state, start, lambda s, batch, i: step_fn(s, batch, settings, seeds), data, None,
        ckpts, wd, loop.LoopConfig(steps, config.log_every, config.checkpoint_every,
                                   config.skip_nonfinite, desc="sweep", members=names),
        learning_rate=lambda i: schedule(i // config.grad_accum),
        at_checkpoint=None if validate is None else _keep_best(sweep, validate, val))
    summary = {n: {"steps": steps, "resumed_from": start, "train_pairs": pairs,
                   **({"final_loss": last[f"loss/{n}"]} if f"loss/{n}" in last else {}),
                   **({"val_loss": val[n]} if n in val else {}),
                   "skipped_nonfinite_steps": last[f"skipped_nonfinite_steps/{n}"]}
               for n in names}
    return state.params, summary


def generate(sweep: Sweep, params, embeddings: np.ndarray) -> list:
    """Every member's captions of raw ``embeddings`` [n, d] (its method's inference
    transform, ``c3.member_eval``; decap's projection computed once per batch for all),
    decoded in one batched program: [members][n]."""
    config = sweep.config
    stops = captioning.stop_ids(sweep.tokenizer, config.stop_at_period)
    decode = captioning.make_decoder(config, gpt2.GPT2(sweep.model.gpt, sweep.model.dtype),
                                     stops, sweep.tokenizer.eos_token_id)

    def member(p, s, e, projected):
        e = c3.member_eval(s, e, projected)
        return decode(p["gpt"], sweep.model.apply({"params": p}, e, method="prefix"))

    def members(params, settings, e, memory):
        projected = (None if memory is None else
                     c3.project_to_memory(e, memory, config.decap_temperature))
        return jax.vmap(member, in_axes=(0, 0, None, None))(params, settings, e, projected)
    member_sh = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec("data"))
    repl = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec())
    fn = jax.jit(members, out_shardings=member_sh)
    settings = parallel.put_members(sweep.mesh, sweep.settings)
    memory = None if sweep.memory is None else parallel.put_whole(sweep.memory, repl)
    batch, n = max(1, config.eval_batch_size), len(embeddings)
    tokens = []
    for start in progress_bar(range(0, n, batch), desc="captions", unit="batch", leave=False):
        chunk = embeddings[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        out = fn(params, settings, parallel.put_whole(padded, repl), memory)
        tokens.append(parallel.to_host(out)[:, :len(chunk)])
    tokens = np.concatenate(tokens, 1)
    return [[captioning.decode_text(sweep.tokenizer, row, stops) for row in rows]
            for rows in tokens[:len(sweep.members)]]


def evaluate(sweep: Sweep, params) -> dict:
    """Each member's captions of the test split's ``eval_field`` embeddings, scored against
    the references: {member: {metrics, captions}}; writes ``captions_test.json``."""
    config = sweep.config
    source = builders.data_source(config.dataset_dir, config.test_split)
    embeddings, refs = cd.eval_rows(source, config.eval_field, config.caption_field,
                                    config.eval_max_examples)
    captioning.check_width(embeddings, sweep.dim, config.eval_field)
    captions = {m.name: c for m, c in zip(sweep.members, generate(sweep, params, embeddings))}
    metrics = score_caption_sets({n: dict(enumerate(c)) for n, c in captions.items()},
                                 dict(enumerate(refs)), spice=config.spice, meteor=config.meteor)
    out = {n: {"metrics": metrics[n], "captions": c} for n, c in captions.items()}
    sweep.wd.write_json("captions_test.json", {
        "references": refs, "captions": {n: r["captions"] for n, r in out.items()}})
    return out
