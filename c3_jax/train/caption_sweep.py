"""The captioning trainer: training, validation, the best params, decoding and evaluation
of a sweep of captioners trained as one program. A single run is a sweep of one member.

The members (C^3 variant x seed x sigma x training field) are stacked on a leading axis
and trained by one jitted step (vmapped over the members, or on CPU the members in turn:
``members_in_turn``), with everything that differs between them
passed as data: the collapse mean (zeros: no collapse), sigma (0: no noise), the gap
direction (span_only), the RNG key and the embedding field each member reads. The member
axis is split over the mesh's 'data' axis (each member's batch and large params over
'fsdp'), so several devices train several members at once, or one member's batch.

A member ends with the parameters it would have trained in a sweep of its own (tests
check this), and decoding runs every member in one batched program. Checkpoints hold the
stacked state, each member's best params by validation (val loss or val ROUGE-L) and every
data stream's position, so a sweep resumes exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from c3_jax import c3, parallel
from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.data.text import load_tokenizer
from c3_jax.eval.caption_metrics import Scorer, score_caption_sets
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
    ``calibrated()`` (called only when needed), the others at ``config.method.noise_sigma``."""
    out = []
    for name in names:
        if name not in NAMED:
            raise ValueError(f"unknown variant {name!r}; known: {sorted(NAMED)}")
        method, on, kind = NAMED[name]
        field = config.data.train_field if on == "train" else config.data.eval_field
        values = ([calibrated()] if kind == "calibrated" else
                  list(sigmas) if method in c3.NOISY else [config.method.noise_sigma])
        out += member_grid(name, method, field, values, config.seed, config.sweep.seeds,
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


# The values ``best_by`` may name, and which end of them is best.
BEST = {"val_loss": "min", "val_rouge_l": "max"}


def check_members(members: Sequence[Member]) -> None:
    """Raises unless the members are at least one, of distinct names and known methods."""
    if not members:
        raise ValueError("a sweep needs at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep member names repeat: {names}")
    for m in members:
        c3.check_method(m.variant)


def noise_model_of(data, method) -> dict:
    """``cd.noise_model`` of ``method``'s ``calibration_split``, ``calibration_pairs`` and
    ``noise_rank`` on the fields of ``data`` (a captioning or text-to-image config's
    sub-configs of those names)."""
    return cd.noise_model(builders.data_source(data.dataset_dir, method.calibration_split),
                          method.calibration_split, data.eval_field, data.train_field,
                          data.caption_field, method.calibration_pairs, method.noise_rank)


def sigma_of(data, method) -> float:
    """A run's sigma: ``method.noise_sigma``, or with ``method.sigma_from_calibration`` the
    calibrated one (``noise_model_of``'s)."""
    return (noise_model_of(data, method)["sigma"] if method.sigma_from_calibration
            else method.noise_sigma)


def stream_key(member: Member) -> str:
    """The data stream a member reads ('seed/field'): members with the same key share it."""
    return f"{member.seed}/{member.train_field}"


def training_pairs(config, source, tokenizer, members: Sequence[Member]) -> dict:
    """{stream key: the tokenized (embedding, caption) pairs its members train on}: the
    whole split, or with ``train_fraction`` < 1 the rows ``cd.fraction_rows`` draws with the
    member's seed; captions are tokenized once per set of rows, and streams of one field
    and set of rows share one pairs object (read once)."""
    data, tokenized, shared, out = config.data, {}, {}, {}
    for m in members:
        rows_seed = m.seed if data.train_fraction < 1 else None
        if rows_seed not in tokenized:
            rows = (None if rows_seed is None else
                    cd.fraction_rows(len(source), data.train_fraction, rows_seed))
            tokenized[rows_seed] = cd.CaptionPairs(
                source, m.train_field, data.caption_field, rows).tokenize(
                tokenizer, data.max_caption_tokens, data.truncate_captions)
        key = (rows_seed, m.train_field)
        if key not in shared:
            shared[key] = tokenized[rows_seed].with_field(m.train_field)
        out[stream_key(m)] = shared[key]
    return out


def stack_settings(settings: Sequence[dict]) -> dict:
    """``c3.member_settings`` of each member stacked on a leading member axis."""
    return {k: np.stack([s[k] for s in settings]) for k in settings[0]}


class Sweep:
    """What training and decoding of a sweep share: the config's shared settings (its
    ``seed``, ``variant``, ``noise_sigma`` and ``train_field`` are the members'), the mesh,
    the pairs each member trains on, the model and the per-member settings; ``scorer``
    (optional): the METEOR JVM its evaluation uses (else one of its own)."""

    def __init__(self, config, members: Sequence[Member], wd: Workdir,
                 scorer: Optional[Scorer] = None):
        check_members(members)
        self.config, self.wd, self.members = config, wd, tuple(members)
        self.scorer = scorer
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.member_mesh(len(members), config.captioner.fsdp)
        data = self.mesh.shape["data"]
        self.size = -(-len(members) // data) * data  # padded with copies of member 0
        self.padded = self.members + (self.members[0],) * (self.size - len(members))
        self.train_source = source = builders.data_source(config.data.dataset_dir,
                                                          config.data.train_split)
        self.tokenizer = load_tokenizer(config.captioner.gpt2)
        self.fields = sorted({m.train_field for m in members})
        self.pairs = training_pairs(config, source, self.tokenizer, self.padded)
        self.dim = next(iter(self.pairs.values())).dim
        self.model, self.gpt_params = captioning.build_module(config)
        # Algorithm 1's means (and stds) over the whole training split, per field.
        self.moments = {f: cd.field_moments(source, f)
                        for f in {*self.fields, config.data.eval_field}}
        evaluation = self.moments[config.data.eval_field]
        methods = {m.variant for m in members}
        noise = noise_model_of(config.data, config.method) if "c3_aniso" in methods else None
        centroids = {f: cd.realign_centroid(source, f, self.moments[f], evaluation)
                     for f in {m.train_field for m in members if m.variant == "realign"}}
        self.settings = stack_settings([
            c3.member_settings(m.variant, m.sigma, self.moments[m.train_field], evaluation,
                               noise, config.method.renormalize, centroids.get(m.train_field))
            for m in self.padded])
        self.memory = None
        if "decap" in methods:
            if any(m.variant == "decap" and m.train_field != config.data.train_field
                   for m in members):
                raise ValueError(f"decap's memory is {config.data.train_field!r}; a decap member "
                                 "must train on it")
            self.memory = cd.field_rows(source, config.data.train_field,
                                        config.method.decap_memory)
        self.seeds = np.asarray([m.seed for m in self.padded], np.uint32)


def members_in_turn() -> bool:
    """Whether a device runs its members one after another (``lax.map``) rather than all at
    once (``vmap``): on CPU, where XLA ran the vmapped (batched) matmuls of the world's
    small captioners at 0.60-0.73 of a member's own rate and the members in turn at its
    rate (benchmarks/sweep.py, BENCHMARKS.md); on accelerators one small captioner leaves
    the device idle, so their members run at once."""
    return jax.default_backend() == "cpu"


def member_loop(in_turn: bool) -> str:
    """``parallel.over_members``' loop: the members in turn ('map') or vmapped."""
    return "map" if in_turn else "vmap"


def member_step(model, tx, skip_nonfinite: bool = False, loss_chunk: int = 0, mesh=None,
                in_turn: bool = False):
    """The sweep's step over its members (``parallel.over_members``): (state, batch,
    settings, seed) -> (state, metrics), each with a leading member axis; a member's step
    is ``captioning``'s update with the method's settings as arrays (``c3.member_train``)
    and the noise of its seed."""
    def step(state, batch, settings, seed):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        embed = lambda e: c3.member_train(settings, e, rng)
        return captioning.train_update(model, tx, state, batch, embed, skip_nonfinite,
                                       loss_chunk)

    return parallel.over_members(step, mesh, member_loop(in_turn))


@functools.partial(jax.jit, donate_argnums=0, static_argnames=(
    "model", "tx", "shardings", "skip_nonfinite", "loss_chunk", "in_turn"))
def sweep_step(state, batch, settings, seeds, *, model, tx: captioning.Optimizer,
               shardings: parallel.TreeShardings, skip_nonfinite: bool, loss_chunk: int,
               in_turn: bool):
    """``member_step`` as the trainer runs it: the state donated and kept in
    ``shardings``. Its static arguments are values (equal settings, equal arguments), so a
    second run, a resume or a test in the same process reuses the traced program."""
    step = member_step(model, tx, skip_nonfinite, loss_chunk, shardings.leaves[0].mesh,
                       in_turn)
    state, metrics = step(state, batch, settings, seeds)
    return shardings.constrain(state), metrics


def compiled_step(model, tx: captioning.Optimizer, shardings, skip_nonfinite: bool = False,
                  loss_chunk: int = 0) -> Callable:
    """(state, batch, settings, seeds) -> (state, metrics): ``sweep_step`` with its static
    arguments bound (``shardings``: the state's tree of shardings)."""
    return functools.partial(sweep_step, model=model, tx=tx,
                             shardings=parallel.TreeShardings.of(shardings),
                             skip_nonfinite=skip_nonfinite, loss_chunk=loss_chunk,
                             in_turn=members_in_turn())


def initial_state(tx, params, with_best: bool = False, mode: str = "min") -> SweepState:
    """One member's state at step 0 from ``params`` (vmapped over members by callers)."""
    worst = jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, jnp.float32)
    return SweepState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      params if with_best else None, worst if with_best else None)


def stacked_init(model, tx, dim: int, with_best: bool = False, mode: str = "min"):
    """(seeds [members], pretrained GPT-2 params or None) -> the stacked initial SweepState:
    each member's params from its own seed (pretrained GPT-2 shared by all)."""
    def init(seed, gpt_params):
        params = captioning.init_params(model, jax.random.key(seed), dim)
        if gpt_params is not None:
            params = {**params, "gpt": gpt_params}
        return initial_state(tx, params, with_best, mode)
    return jax.vmap(init, in_axes=(0, None))


@functools.partial(jax.jit, static_argnames=("model", "tx", "dim", "with_best", "mode",
                                             "shardings"))
def initial_states(seeds, gpt_params, *, model, tx: captioning.Optimizer, dim: int,
                   with_best: bool, mode: str, shardings: parallel.TreeShardings):
    """``stacked_init`` compiled once per setting, placed in ``shardings``."""
    return shardings.constrain(stacked_init(model, tx, dim, with_best, mode)(seeds, gpt_params))


# ---------------------------------------------------------------------------
# Validation and the best params


@functools.partial(jax.jit, static_argnames=("model", "loss_chunk", "mesh", "in_turn"))
def member_nll(params, batch, settings, *, model, loss_chunk: int, mesh, in_turn: bool) -> tuple:
    """Each member's summed caption NLL of its batch (no noise) and its token count."""
    def one(p, b, s):
        e = c3.member_train(s, b["embedding"])
        nll, count = model.apply({"params": p}, e, b["ids"], b["mask"], loss_chunk,
                                 method="caption_nll")
        return nll * count, count
    return parallel.over_members(one, mesh, member_loop(in_turn))(params, batch, settings)


def loss_validation(sweep: Sweep) -> Optional[Callable]:
    """params -> per-member mean validation NLL ([size], no noise): the first
    ``val_batches`` batches of the val split in order; None without validation."""
    data, cap = sweep.config.data, sweep.config.captioner
    if cap.val_batches <= 0 or not data.val_split:
        return None
    source = builders.data_source(data.dataset_dir, data.val_split)
    first = cd.CaptionPairs(source, sweep.fields[0], data.caption_field).tokenize(
        sweep.tokenizer, data.max_caption_tokens, data.truncate_captions)
    val = {f: first.with_field(f) for f in sweep.fields}
    batch = min(cap.batch_size, len(first) // jax.device_count() * jax.device_count())
    if batch == 0:
        return None
    fields = [m.train_field for m in sweep.padded]
    sharding = parallel.member_batch_sharding(sweep.mesh)

    loss = functools.partial(member_nll, model=sweep.model, loss_chunk=cap.loss_chunk,
                             mesh=sweep.mesh, in_turn=members_in_turn())
    settings = parallel.put_members(sweep.mesh, sweep.settings)

    # Read once (into memory when it fits); each validation iterates from the start.
    readers = {f: pipeline.make_loader(p, batch, 0, shuffle=False, num_epochs=1,
                                       shard_index=0, shard_count=1) for f, p in val.items()}

    def validate(params) -> np.ndarray:
        loaders = {f: iter(reader) for f, reader in readers.items()}
        total = count = 0.0
        for _ in range(cap.val_batches):
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


def rouge_validation(sweep: Sweep) -> Optional[Callable]:
    """params -> per-member ROUGE-L ([size]) of the captions of the first
    ``val_decode_examples`` val rows' ``eval_field`` embeddings (the official stage 2 keeps
    its best checkpoint by val ROUGE-L of 1,000 val images); None without a val split."""
    data = sweep.config.data
    if not data.val_split:
        return None
    source = builders.data_source(data.dataset_dir, data.val_split)
    embeddings, refs = cd.eval_rows(source, data.eval_field, data.caption_field,
                                    sweep.config.captioner.val_decode_examples)
    names = [m.name for m in sweep.members]

    def validate(params) -> np.ndarray:
        captions = generate(sweep, params, embeddings)
        scores = score_caption_sets({n: dict(enumerate(c)) for n, c in zip(names, captions)},
                                    dict(enumerate(refs)), spice=False, meteor=False)
        values = [scores[n]["ROUGE-L"] for n in names]
        return np.asarray(values + values[:1] * (sweep.size - len(values)), np.float64)
    return validate


def validation(sweep: Sweep) -> Optional[Callable]:
    """The per-member value best params are kept by (``best_by``), or None."""
    if sweep.config.captioner.best_by == "val_rouge_l":
        return rouge_validation(sweep)
    return loss_validation(sweep)


@functools.partial(jax.jit, static_argnames="lower")
def keep_better(state: SweepState, values: jax.Array, *, lower: bool) -> SweepState:
    """Each member's best params and value, replaced where ``values`` is better."""
    better = values < state.best_value if lower else values > state.best_value
    pick = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return state.replace(best=jax.tree.map(pick, state.params, state.best),
                         best_value=jnp.where(better, values, state.best_value))


def keep_best(sweep: Sweep, validate: Callable, last: dict):
    """At each checkpoint: the validation values, logged (their mean over the members as
    ``best_by``, each member's as ``best_by/<member>``), kept in ``last`` and folded into
    each member's best params (lowest val loss, highest val ROUGE-L)."""
    name, names = sweep.config.captioner.best_by, [m.name for m in sweep.members]
    member = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec("data"))
    lower = BEST[name] == "min"

    def at_checkpoint(state):
        values = validate(state.params)
        state = keep_better(state, parallel.put_whole(values.astype(np.float32), member),
                            lower=lower)
        last.update({n: float(v) for n, v in zip(names, values)})
        return state, {name: float(np.mean(values[:len(names)])),
                       **{f"{name}/{n}": last[n] for n in names}}
    return at_checkpoint


# ---------------------------------------------------------------------------
# Training


def train(sweep: Sweep) -> tuple:
    """Trains (or resumes) the sweep in ``sweep.wd``; returns (the members' last params,
    stacked; {member: summary}). Each member's best params by validation are kept in the
    checkpoints (``best``); with ``init_from`` every member starts from that run's params."""
    config, cap, wd = sweep.config, sweep.config.captioner, sweep.wd
    pairs = len(next(iter(sweep.pairs.values())))
    split = sweep.mesh.shape["fsdp"]
    if cap.batch_size % split or cap.batch_size > pairs:
        raise ValueError(f"captioner.batch_size={cap.batch_size} must be a multiple of the {split} "
                         f"devices each member is split over, and at most the {pairs} pairs")
    steps = captioning.total_steps(config, pairs)
    updates = max(steps // cap.grad_accum, 1)
    tx = captioning.make_optimizer(config, updates)
    validate = validation(sweep)
    with_best, mode = validate is not None, BEST[cap.best_by]
    init = stacked_init(sweep.model, tx, sweep.dim, with_best, mode)
    seeds = parallel.put_members(sweep.mesh, sweep.seeds)
    abstract = jax.eval_shape(init, seeds, sweep.gpt_params)
    shardings = parallel.member_shardings(sweep.mesh, abstract)
    settings = parallel.put_members(sweep.mesh, sweep.settings)
    step_fn = compiled_step(sweep.model, tx, shardings, cap.skip_nonfinite, cap.loss_chunk)
    sharding = parallel.member_batch_sharding(sweep.mesh)
    data = pipeline.MemberBatches(
        [stream_key(m) for m in sweep.padded], [sweep.pairs[stream_key(m)] for m in sweep.padded],
        [m.seed for m in sweep.padded], cap.batch_size, ("embedding", "ids", "mask"),
        lambda a: parallel.put_whole(a, sharding))

    def fresh():
        if not cap.init_from:
            return initial_states(seeds, sweep.gpt_params, model=sweep.model, tx=tx,
                                  dim=sweep.dim, with_best=with_best, mode=mode,
                                  shardings=parallel.TreeShardings.of(shardings))
        start = jax.vmap(lambda p: initial_state(tx, p, with_best, mode))
        return jax.jit(start, out_shardings=shardings)(restore_params(sweep, cap.init_from))

    ckpts = checkpoints.Checkpoints(wd.file("checkpoints"), cap.keep_checkpoints)
    state, start = ckpts.resume_or_init(abstract, shardings, data, fresh)
    schedule = captioning.schedule_of(config, updates)
    names, val = tuple(m.name for m in sweep.members), {}
    state, last, _ = loop.fit(
        state, start, lambda s, batch, i: step_fn(s, batch, settings, seeds), data, None,
        ckpts, wd, loop.LoopConfig(steps, cap.log_every, cap.checkpoint_every, cap.skip_nonfinite,
                                   desc="train" if len(names) == 1 else "sweep", members=names),
        learning_rate=lambda i: schedule(i // cap.grad_accum),
        at_checkpoint=None if validate is None else keep_best(sweep, validate, val))
    pace = {k: last[k] for k in ("seconds_per_step",) if k in last}
    summary = {n: {"steps": steps, "resumed_from": start, "train_pairs": pairs,
                   **({"final_loss": last[f"loss/{n}"]} if f"loss/{n}" in last else {}),
                   **pace, "skipped_nonfinite_steps": last[f"skipped_nonfinite_steps/{n}"],
                   **({cap.best_by: val[n]} if n in val else {})}
               for n in names}
    return state.params, summary


# ---------------------------------------------------------------------------
# Params of finished runs


def every_member(sweep: Sweep, params):
    """Params with a leading member axis of 1 (one captioner's: every member's) or of the
    sweep's padded size, placed on the sweep's devices."""
    count = jax.tree.leaves(params)[0].shape[0]
    if count not in (1, sweep.size):
        raise ValueError(f"the params hold {count} captioners; init_from and restore_from "
                         "take a run of one captioner (the 'caption' experiment)")
    grow = lambda tree: jax.tree.map(
        lambda a: jnp.broadcast_to(a, (sweep.size,) + a.shape[1:]), tree)
    shardings = parallel.member_shardings(sweep.mesh, jax.eval_shape(grow, params))
    return jax.jit(grow, out_shardings=shardings)(params)


def one_member(sweep: Sweep, params):
    """One captioner's params (host or device arrays) as every member's."""
    repl = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec())
    return every_member(sweep, jax.tree.map(
        lambda a: parallel.put_whole(np.asarray(a)[None], repl), params))


def saved_state(path: str, sharding) -> dict:
    """The whole state tree of a checkpoint's ``state`` item, as its metadata describes it,
    restored with ``sharding``."""
    checkpointer = ocp.StandardCheckpointer()
    try:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                              checkpointer.metadata(path).item_metadata)
        return checkpointer.restore(path, target)
    finally:
        checkpointer.close()


def restore_params(sweep: Sweep, run_dir: str):
    """Every member's params from a finished captioning run's checkpoints: its best by
    validation where it kept them, else its last. A run of one captioner gives every
    member its params; a checkpoint of the older single-run layout (no member axis, the
    best in ``best/``) is read too."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ directory; pass the --workdir "
                                "of a finished captioning run")
    ckpts = checkpoints.Checkpoints(directory, create=False)
    try:
        latest, best = ckpts.latest_step(), ckpts.best.best_step()
    finally:
        ckpts.close()
    if latest is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint; pass the --workdir of a "
                                "finished captioning run")
    repl = jax.sharding.NamedSharding(sweep.mesh, jax.sharding.PartitionSpec())
    state = saved_state(os.path.join(directory, "latest", str(latest), "state"), repl)
    ours = jax.eval_shape(lambda k: captioning.init_params(sweep.model, k, sweep.dim),
                          jax.random.key(0))
    shapes = lambda tree: [a.shape for a in jax.tree.leaves(tree)]
    if shapes(state["params"]) == shapes(ours):  # the older single-run layout
        if best is not None:
            state = saved_state(os.path.join(directory, "best", str(best), "state"), repl)
        return every_member(sweep, jax.tree.map(lambda a: a[None], state["params"]))
    params = state["best"] if state.get("best") is not None else state["params"]
    if ([s[1:] for s in shapes(params)] != shapes(ours)
            or jax.tree.structure(params) != jax.tree.structure(ours)):
        raise ValueError(f"{directory} holds a captioner of another architecture than this "
                         "config's; pass a run trained with the same model settings")
    return every_member(sweep, params)


# ---------------------------------------------------------------------------
# Decoding and evaluation


@functools.partial(jax.jit, static_argnames=("model", "decode", "temperature", "out",
                                             "in_turn"))
def member_tokens(params, settings, e, memory, offset, *, model,
                  decode: captioning.Decoder, temperature: float, out,
                  in_turn: bool) -> jax.Array:
    """Every member's caption tokens of ``e`` [n, d]: its inference transform (decap's
    projection onto ``memory`` computed once for all), plus ``offset`` when not None, the
    mapper and ``decode``: [members, n, T] in the sharding ``out``."""
    def member(p, s, projected):
        x = c3.member_eval(s, e, projected)
        if offset is not None:
            x = x + offset
        return decode(p["gpt"], model.apply({"params": p}, x, method="prefix"))
    projected = None if memory is None else c3.project_to_memory(e, memory, temperature)
    tokens = parallel.over_members(member, out.mesh, member_loop(in_turn), shared=1)(
        params, settings, projected)
    return jax.lax.with_sharding_constraint(tokens, out)


def generate(sweep: Sweep, params, embeddings: np.ndarray, settings: Optional[dict] = None,
             shift: Optional[np.ndarray] = None, marks: Optional[list] = None) -> list:
    """Every member's captions of raw ``embeddings`` [n, d]: its method's inference
    transform (``c3.member_eval`` with ``settings``, stacked: by default the sweep's;
    decap's projection computed once per batch for all), plus an optional constant
    ``shift``, then the mapper and decoding, in one batched program: [members][n]. A
    batch's rows are split over the 'fsdp' devices; ``marks`` gets (batch, time) as each
    batch's tokens reach the host."""
    config = sweep.config
    stops = captioning.stop_ids(sweep.tokenizer, config.eval.stop_at_period)
    decode = captioning.make_decoder(config, gpt2.GPT2(sweep.model.gpt, sweep.model.dtype),
                                     stops, sweep.tokenizer.eos_token_id)
    offset = None if shift is None else jnp.asarray(shift)
    spec = jax.sharding.PartitionSpec
    rows = jax.sharding.NamedSharding(sweep.mesh, spec("fsdp"))
    repl = jax.sharding.NamedSharding(sweep.mesh, spec())
    fn = functools.partial(member_tokens, model=sweep.model, decode=decode,
                           temperature=config.method.decap_temperature,
                           out=jax.sharding.NamedSharding(sweep.mesh, spec("data", "fsdp")),
                           in_turn=members_in_turn())
    settings = parallel.put_members(sweep.mesh, sweep.settings if settings is None else settings)
    memory = None if sweep.memory is None else parallel.put_whole(sweep.memory, repl)
    split = sweep.mesh.shape["fsdp"]
    batch, n = max(split, config.eval.batch_size // split * split), len(embeddings)
    tokens = []
    for start in progress_bar(range(0, n, batch), desc="captions", unit="batch", leave=False):
        chunk = embeddings[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        out = fn(params, settings, parallel.put_whole(padded, rows), memory, offset)
        tokens.append(parallel.to_host(out)[:, :len(chunk)])
        if marks is not None:
            marks.append((len(marks) + 1, time.perf_counter()))
    tokens = np.concatenate(tokens, 1)
    return [[captioning.decode_text(sweep.tokenizer, row, stops) for row in rows]
            for rows in tokens[:len(sweep.members)]]


def captions_record(references: list, captions: dict):
    """``captions_test.json``: a run of one captioner's [{prediction, references}], a
    sweep's {references, captions: {member: [...]}}."""
    if len(captions) == 1:
        return [{"prediction": c, "references": r}
                for c, r in zip(next(iter(captions.values())), references)]
    return {"references": references, "captions": captions}


def evaluate(sweep: Sweep, params, marks: Optional[list] = None) -> dict:
    """Each member's captions of the test split's ``eval_field`` embeddings, scored against
    the references: {member: {metrics, captions, samples (the first five)}}; writes
    ``captions_test.json``; ``marks`` as ``generate``'s."""
    data, options = sweep.config.data, sweep.config.eval
    source = builders.data_source(data.dataset_dir, data.test_split)
    embeddings, refs = cd.eval_rows(source, data.eval_field, data.caption_field,
                                    options.max_examples)
    captioning.check_width(embeddings, sweep.dim, data.eval_field)
    captions = {m.name: c for m, c in zip(sweep.members,
                                          generate(sweep, params, embeddings, marks=marks))}
    metrics = parallel.on_process_zero(lambda: score_caption_sets(
        {n: dict(enumerate(c)) for n, c in captions.items()}, dict(enumerate(refs)),
        spice=options.spice, meteor=options.meteor, scorer=sweep.scorer))
    sweep.wd.write_json("captions_test.json", captions_record(refs, captions))
    return {n: {"metrics": metrics[n], "captions": c,
                "samples": [{"prediction": p, "reference": r[0]}
                            for p, r in zip(c[:5], refs[:5])]}
            for n, c in captions.items()}
