"""The text-to-image trainer: LAFITE-conditioned StyleGAN2 generators (C^3 variant x seed
x sigma) stacked on a leading member axis and trained by one jitted G+D step (lazy R1 and
path-length steps included), with the collapse mean, sigma, gap direction and seed of each
member passed as data, as ``caption_sweep`` does for captioners. A single run is a sweep of
one member (``config_member``): training, checkpoints, restoring, generation and scoring
have this one path. The losses, the step and the scores are ``generation``'s.

Where the members live (``Layout``): several members are split over the devices, each
device running its own one after another with its whole batch; one member (or fsdp > 1)
runs over all devices, its batch split over them and its large arrays over 'fsdp'. A
member ends with the parameters and images it gets as a sweep of one (tests check this).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from c3_jax import c3, parallel
from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.models import lafite_import, stylegan2
from c3_jax.progress import progress_bar
from c3_jax.train import caption_sweep, checkpoints, generation, loop
from c3_jax.workdir import Workdir

Member = caption_sweep.Member  # its train_field is the config's


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a sweep's arrays live. ``split``: the members over the mesh's 'data' devices,
    each device running its members one after another with each member's batch whole (the
    members padded with copies of the first to fill the devices); else every member in
    turn over all devices, its batch split over them and its large arrays over 'fsdp'."""
    mesh: Mesh
    split: bool

    def size(self, members: int) -> int:
        """The member count with padding."""
        data = self.mesh.shape["data"] if self.split else 1
        return -(-members // data) * data

    def state_shardings(self, abstract):
        """Shardings of a stacked state [members, ...]."""
        if self.split:
            return parallel.member_shardings(self.mesh, abstract)
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), abstract)
        return jax.tree.map(lambda s: NamedSharding(self.mesh, P(None, *s.spec)),
                            parallel.state_shardings(self.mesh, one))

    def batch_sharding(self) -> NamedSharding:
        """Training batches [members, batch, ...]."""
        if self.split:
            return parallel.member_batch_sharding(self.mesh)
        return NamedSharding(self.mesh, P(None, parallel.DATA_AXES))

    def put_members(self, tree):
        """Host arrays [members, ...] (settings, seeds) that every process holds whole,
        placed with their members."""
        sharding = NamedSharding(self.mesh, P("data" if self.split else None))
        return jax.tree.map(lambda a: parallel.put_whole(a, sharding), tree)

    def rows_sharding(self, rows: int) -> NamedSharding:
        """Rows every member generates from [rows, ...]: split over the devices where one
        member runs over all of them and they divide ``rows``, else whole on each."""
        if not self.split and rows % self.mesh.size == 0:
            return NamedSharding(self.mesh, P(parallel.DATA_AXES))
        return NamedSharding(self.mesh, P())


def member_layout(members: int, fsdp: int) -> Layout:
    """Several members with fsdp 1: split over the devices (few or no padding members);
    one member, or fsdp > 1: each over all devices in turn."""
    if members > 1 and fsdp == 1:
        return Layout(parallel.member_mesh(members, split_batch=False), True)
    return Layout(parallel.make_mesh(fsdp), False)


def config_member(config) -> Member:
    """The one member of a single run: the config's variant, seed and sigma (the calibrated
    one with ``sigma_from_calibration``)."""
    return Member(config.method.variant, config.method.variant, config.seed,
                  caption_sweep.sigma_of(config.data, config.method), config.data.train_field)


class GanSweep:
    """What training and generation of a sweep share: the config (its ``variant``,
    ``noise_sigma`` and ``seed`` are the members'), the layout, the training rows, the
    frozen image encoder, G and D, the optimizers and each member's settings and seed."""

    def __init__(self, config, members: Sequence[Member], wd: Workdir,
                 encoder: generation.Encoder | None = None):
        caption_sweep.check_members(members)
        for m in members:
            generation.check_method(m.variant)
        self.config, self.wd, self.members = config, wd, tuple(members)
        parallel.maybe_initialize_distributed()
        self.layout = member_layout(len(members), config.generator.fsdp)
        self.mesh = self.layout.mesh
        self.padded = self.members + (self.members[0],) * (
            self.layout.size(len(members)) - len(members))
        self.train_source = builders.data_source(config.data.dataset_dir,
                                                 config.data.train_split)
        self.rows = generation.ImageRows(self.train_source, config.data.image_field,
                                         config.data.train_field)
        self.encoder = encoder or generation.clip_encoder(config.generator.clip)
        generation.check_encoder(self.encoder, self.rows, config.data.train_field)
        self.gan = generation.gan_config(config, self.rows.dim, self.rows.resolution)
        self.gen, self.disc = stylegan2.Generator(self.gan), stylegan2.Discriminator(self.gan)
        self.tx = generation.optimizer(config)
        self.g_tx = generation.optimizer(config, config.generator.pl_every)
        self.d_tx = generation.optimizer(config, config.generator.r1_every)
        self.settings = member_settings(config, self.train_source, self.padded)
        self.seeds = np.asarray([m.seed for m in self.padded], np.uint32)

    def abstract_state(self) -> tuple:
        """(the stacked state's ShapeDtypeStructs, its shardings)."""
        abstract = jax.eval_shape(lambda s: stacked_init(s, self.gen, self.disc, self.tx),
                                  jax.ShapeDtypeStruct(self.seeds.shape, self.seeds.dtype))
        return abstract, self.layout.state_shardings(abstract)

    def initial_state(self, shardings):
        """The first stacked state: ``stacked_init``, or with ``init_from`` every member
        from LAFITE's G, D and G_ema of that pickle (``lafite_import``), Adam fresh."""
        if not self.config.generator.init_from:
            seeds = self.layout.put_members(self.seeds)
            return initial_states(seeds, gen=self.gen, disc=self.disc, tx=self.tx,
                                  shardings=parallel.TreeShardings.of(shardings))
        nets = lafite_import.load(self.config.generator.init_from, self.gan)
        g, d = nets["G"], nets["D"]
        one = generation.GANState(np.zeros((), np.int32), g, d, self.tx.init(g),
                                  self.tx.init(d), nets["G_ema"], np.zeros((), np.float32))
        n = len(self.padded)
        return jax.tree.map(lambda a, s: parallel.put_whole(np.stack([np.asarray(a)] * n), s),
                            one, shardings)


def stacked_init(seeds, gen, disc, tx):
    """Each member's initial state (``generation.init_state`` from its seed)."""
    return jax.vmap(lambda s: generation.init_state(gen, disc, tx, gen.config,
                                                    jax.random.key(s)))(seeds)


@functools.partial(jax.jit, static_argnames=("gen", "disc", "tx", "shardings"))
def initial_states(seeds, *, gen, disc, tx, shardings: parallel.TreeShardings):
    """``stacked_init`` compiled once per setting, placed in ``shardings``."""
    return shardings.constrain(stacked_init(seeds, gen, disc, tx))


def member_settings(config, source, members: Sequence[Member]) -> dict:
    """The members' ``c3.member_settings`` stacked (trained on ``train_field``, conditioned
    on ``eval_field`` at inference), with ``train_condition``'s ``twice``."""
    methods = {m.variant for m in members}
    train = cd.field_moments(source, config.data.train_field)
    test = cd.field_moments(source, config.data.eval_field)
    noise = caption_sweep.noise_model_of(config.data, config.method) if "c3_aniso" in methods else None
    centroid = (cd.realign_centroid(source, config.data.train_field, train, test)
                if "realign" in methods else None)
    settings = [{**c3.member_settings(m.variant, m.sigma, train, test, noise, centroid=centroid),
                 "twice": generation.collapse_twice(m.variant,
                                                    config.generator.collapse_twice)}
                for m in members]
    return {k: np.stack([s[k] for s in settings]) for k in settings[0]}


def over_members(fn, layout: Layout, shared: int = 0):
    """``parallel.over_members`` unrolled: the members one after another in the compiled
    program, with a split layout each device its own. Not ``vmap``: vmapping StyleGAN2's
    convolutions over per-member weights makes grouped convolutions, which XLA:CPU ran 5x
    slower than the members one by one and which XLA's SPMD partitioner cannot split over
    devices. Not ``lax.map`` either: XLA:CPU ran the G+D step 17x slower inside its while
    loop (3.8 s against 0.23 s per step for one shapes_t2i generator, on this project's
    2-core CPU)."""
    return parallel.over_members(fn, layout.mesh if layout.split else None, "unroll", shared)


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a sweep's G+D step is built from, as a value (the compiled step's static
    argument: equal parts, one trace): G, D, the frozen encoder's ``fn`` and input size,
    G's and D's Adam, the layout."""
    gen: stylegan2.Generator
    disc: stylegan2.Discriminator
    encode: Callable
    image_size: int
    g_tx: generation.Adam
    d_tx: generation.Adam
    layout: Layout

    @classmethod
    def of(cls, sweep) -> "Parts":
        """The parts of a ``GanSweep`` (or of anything with its attributes)."""
        return cls(sweep.gen, sweep.disc, sweep.encoder.fn, sweep.encoder.image_size,
                   sweep.g_tx, sweep.d_tx, sweep.layout)


def member_step(parts: Parts, cfg: generation.StepConfig, skip_nonfinite: bool):
    """(state, batch, settings, seeds, encoder params, regs) -> (state, metrics), over the
    members."""
    def member(state, batch, s, seed, encoder_params, regs):
        condition = lambda e, rng: generation.train_condition(s, e, rng)
        encode = lambda images: parts.encode(encoder_params, images)
        return generation.gan_update(parts.gen, parts.disc, encode, cfg, parts.g_tx,
                                     parts.d_tx, state, batch, jax.random.key(seed), regs,
                                     condition, skip_nonfinite, parts.image_size,
                                     generation.itc_features(cfg.itc_space, s))

    def step(state, batch, settings, seeds, encoder_params, regs: tuple):
        return over_members(functools.partial(member, regs=regs), parts.layout, shared=1)(
            state, batch, settings, seeds, encoder_params)
    return step


@functools.partial(jax.jit, donate_argnums=0, static_argnames=(
    "regs", "parts", "cfg", "skip_nonfinite", "squeeze", "shardings"))
def sweep_step(state, batch, settings, seeds, encoder_params, *, regs: tuple, parts: Parts,
               cfg: generation.StepConfig, skip_nonfinite: bool, squeeze: bool,
               shardings: parallel.TreeShardings):
    """``member_step`` as the trainer runs it: the state donated and kept in ``shardings``;
    ``regs`` (path-length step, R1 step): up to four compiled variants. ``squeeze``: the
    metrics of the one member without the member axis. Its static arguments are values,
    so a second run, a resume or a test in the same process reuses the traced program."""
    state, metrics = member_step(parts, cfg, skip_nonfinite)(state, batch, settings, seeds,
                                                             encoder_params, regs)
    return (shardings.constrain(state),
            jax.tree.map(lambda a: a[0], metrics) if squeeze else metrics)


class TrainStep:
    """(state, batch, settings, seeds, regs) -> (state, metrics): ``sweep_step`` with a
    sweep's parts, its encoder's params (replicated on its mesh) and the state's
    shardings bound; ``lower`` as a jitted function's."""

    def __init__(self, sweep, cfg: generation.StepConfig, shardings,
                 skip_nonfinite: bool = False, squeeze: bool = False):
        self.static = dict(parts=Parts.of(sweep), cfg=cfg, skip_nonfinite=skip_nonfinite,
                           squeeze=squeeze, shardings=parallel.TreeShardings.of(shardings))
        repl = NamedSharding(sweep.layout.mesh, P())
        self.encoder_params = jax.tree.map(lambda a: parallel.put_whole(np.asarray(a), repl),
                                           sweep.encoder.params)

    def __call__(self, state, batch, settings, seeds, regs: tuple):
        return sweep_step(state, batch, settings, seeds, self.encoder_params, regs=regs,
                          **self.static)

    def lower(self, state, batch, settings, seeds, regs: tuple):
        return sweep_step.lower(state, batch, settings, seeds, self.encoder_params, regs=regs,
                                **self.static)


def train(sweep: GanSweep) -> tuple:
    """Trains (or resumes) the sweep in ``sweep.wd``; returns (the members' EMA generators,
    stacked; {member: summary}). A sweep of one logs its metrics as they are; several
    members log each one's ('g_adv/<member>') and their mean."""
    config, g, wd = sweep.config, sweep.config.generator, sweep.wd
    generation.check_batch(config, sweep.rows)
    layout = sweep.layout
    abstract, shardings = sweep.abstract_state()
    settings, seeds = layout.put_members((sweep.settings, sweep.seeds))
    names = tuple(m.name for m in sweep.members)
    logged = names if len(names) > 1 else ()
    step_fn = TrainStep(sweep, generation.StepConfig.from_config(config), shardings,
                        g.skip_nonfinite, squeeze=not logged)
    sharding = layout.batch_sharding()
    data = pipeline.MemberBatches([str(m.seed) for m in sweep.padded],
                                  [sweep.rows] * len(sweep.padded),
                                  [m.seed for m in sweep.padded], g.batch_size,
                                  ("image", "embedding"), lambda a: parallel.put_whole(a, sharding))
    ckpts = checkpoints.Checkpoints(wd.file("checkpoints"), g.keep_checkpoints)
    state, start = ckpts.resume_or_init(abstract, shardings, data,
                                        lambda: sweep.initial_state(shardings))
    state, last, _ = loop.fit(
        state, start, lambda s, batch, i: step_fn(s, batch, settings, seeds,
                                                  generation.regs_at(config, i)),
        data, None, ckpts, wd,
        loop.LoopConfig(g.max_steps, g.log_every, g.checkpoint_every, g.skip_nonfinite,
                        "train G+D", ("g_adv", "d_adv"), members=logged),
        learning_rate=lambda i: g.lr)
    summary = {n: {"steps": g.max_steps, "resumed_from": start,
                   "train_images": len(sweep.rows),
                   "final_metrics": member_metrics(last, n, logged)}
               for n in names}
    return state.ema, summary


def member_metrics(last: dict, name: str, logged: tuple) -> dict:
    """A member's final metrics: all of them for a sweep of one, else its own
    ('<metric>/<name>')."""
    if not logged:
        return last
    return {k.rsplit("/", 1)[0]: v for k, v in last.items() if k.endswith(f"/{name}")}


def restore_ema(sweep: GanSweep, run_dir: str):
    """The stacked EMA generators of another run's latest checkpoint (a sweep of the same
    members: evaluation only)."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ directory; pass the --workdir "
                                "of a finished generation run")
    abstract, shardings = sweep.abstract_state()
    return checkpoints.restore_state(directory, checkpoints.abstract(abstract, shardings)).ema


@functools.partial(jax.jit, static_argnames=("gen", "layout", "from_images"))
def member_images(ema, settings, seeds, e, i, *, gen, layout: Layout, from_images: bool):
    """Every member's uint8 images of the embeddings ``e`` of test batch ``i``: its
    condition (``evaluate``'s), latents from ``seed + 1`` folded with ``i``."""
    transform = generation.train_condition if from_images else c3.member_eval

    def member(params, settings, seed, e, i):
        cond = transform(settings, e)
        z_key, noise_key = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1), i))
        z = jax.random.normal(z_key, (e.shape[0], gen.config.z_dim))
        return generation.to_uint8(gen.apply({"params": params}, z, cond, noise_key))
    return over_members(member, layout, shared=2)(ema, settings, seeds, e, i)


def evaluate(sweep: GanSweep, ema, limit: int = 0, from_images: bool = False) -> dict:
    """Every member's images from the first ``limit`` (0: all) test rows' text embeddings
    through its method (``c3.member_eval``), with its own latents (``seed + 1`` folded with
    the batch index), generated in one program per batch and scored by
    ``generation.ImageScores`` as ``fid_protocol`` says: "lafite", one random caption per
    row against every training image's statistics; "paired", each row's first caption
    against the same rows' images. Returns {member: {metrics (with ``fid_protocol``),
    images, captions}}.

    ``from_images``: from the test images' own embeddings (``train_field``) through the
    member's training transform without its noise (``generation.train_condition``), the
    condition the generator was trained on: what it renders with no modality gap to cross
    (the CLIP score is then taken against those image embeddings)."""
    config, layout = sweep.config, sweep.layout
    fn = functools.partial(member_images, gen=sweep.gen, layout=layout,
                           from_images=from_images)
    settings, seeds = layout.put_members((sweep.settings, sweep.seeds))
    repl = NamedSharding(layout.mesh, P())
    inception = generation.inception_of(config.eval.inception_weights)
    scores = [generation.ImageScores(sweep.encoder, inception) for _ in sweep.members]
    real = generation.ImageScores(sweep.encoder, inception)
    lafite = config.eval.fid_protocol == "lafite"
    pick = np.random.default_rng(config.seed) if lafite else None
    field = config.data.train_field if from_images else config.data.eval_field
    images, captions = [[] for _ in sweep.members], []
    for i, (e, rows, caps) in enumerate(generation.test_batches(config, limit, field, pick)):
        fake = parallel.to_host(fn(ema, settings, seeds,
                                   parallel.put_whole(e, layout.rows_sharding(len(e))),
                                   parallel.put_whole(np.int32(i), repl)))
        for k, s in enumerate(scores):
            s.update(fake[k], e)
            images[k].append(fake[k])
        if not lafite:
            real.add_real(rows)
        captions += caps
    if lafite:
        for rows in progress_bar(generation.train_images(config), desc="real statistics",
                                 unit="batch"):
            real.add_real(rows)
    out = {}
    for m, s, im in zip(sweep.members, scores, images):
        metrics = s.result(real)
        metrics["fid_protocol"] = generation.protocol_note(config, metrics["num_generated"],
                                                           real.stats["clip_real"].count)
        out[m.name] = {"metrics": metrics, "images": np.concatenate(im), "captions": captions}
    return out
