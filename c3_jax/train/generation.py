"""C^3 text-to-image: a LAFITE-conditioned StyleGAN2 trained on image embeddings only
(Collapse with the image mean, Corrupt with noise) and evaluated from text embeddings
(Collapse with the text mean).

One jitted, sharded step updates the discriminator (non-saturating logistic loss, LAFITE's
contrastive term on real images, lazy R1) and the generator (non-saturating loss, LAFITE's
contrastive terms between discriminator features / the frozen CLIP's embedding of the
generated image and the condition), then the EMA generator. Noise, latents and the C^3
noise come from the seed folded with the step, and checkpoints hold the data-iterator
position, so a run resumes exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from c3_jax import c3, parallel
from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.data.images import ImagePreprocessor
from c3_jax.eval import image_metrics as im
from c3_jax.models import clip, inception, stylegan2
from c3_jax.progress import progress_bar
from c3_jax.train import checkpoints, connect, loop
from c3_jax.train import state as st
from c3_jax.workdir import Workdir

@flax.struct.dataclass
class GANState:
    """Everything a generation checkpoint holds besides the data iterator."""
    step: jax.Array
    g_params: dict
    d_params: dict
    g_opt: optax.OptState
    d_opt: optax.OptState
    ema: dict


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The loss weights and schedules the jitted step depends on (static)."""
    batch_size: int
    r1_gamma: float = 10.0
    r1_every: int = 16
    itd_weight: float = 5.0
    itc_weight: float = 10.0
    temperature: float = 0.5
    ema_kimg: float = 10.0
    ema_rampup: float = 0.0

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


def gan_config(config, cond_dim: int, resolution: int) -> stylegan2.GANConfig:
    return stylegan2.GANConfig(resolution=resolution, cond_dim=cond_dim, z_dim=config.z_dim,
                               w_dim=config.w_dim, mapping_layers=config.mapping_layers,
                               cond_hidden=config.cond_hidden,
                               channel_base=config.channel_base,
                               channel_max=config.channel_max, mbstd_group=config.mbstd_group,
                               architecture=config.architecture)


def optimizer(config) -> optax.GradientTransformation:
    """StyleGAN2's Adam (lr 2.5e-3, betas (0, 0.99), eps 1e-8), for G and for D."""
    return optax.adam(config.lr, b1=config.beta1, b2=config.beta2, eps=1e-8)


# ---------------------------------------------------------------------------
# Losses and the step


def contrastive_loss(features: jax.Array, cond: jax.Array, temperature: float) -> jax.Array:
    """Symmetric InfoNCE between normalized ``features`` and their conditions (LAFITE):
    CLIP's loss at a fixed temperature."""
    return connect.clip_loss(features, cond, jnp.log(1.0 / temperature))


def r1_penalty(d_apply: Callable, d_params, real: jax.Array, cond: jax.Array) -> jax.Array:
    """Mean over the batch of |grad_x D(x, c)|^2 at real images."""
    grad = jax.grad(lambda x: d_apply(d_params, x, cond)[0].sum())(real)
    return jnp.square(grad).sum(axis=(1, 2, 3)).mean()


def ema_beta(cfg: StepConfig, step: jax.Array) -> jax.Array:
    """StyleGAN2's EMA decay: half-life of ``ema_kimg`` thousand images (with rampup)."""
    half_life = jnp.asarray(cfg.ema_kimg * 1000.0, jnp.float32)
    if cfg.ema_rampup > 0:
        seen = (step + 1).astype(jnp.float32) * cfg.batch_size
        half_life = jnp.minimum(half_life, seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / jnp.maximum(half_life, 1e-8))


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255]."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def gan_update(gen: stylegan2.Generator, disc: stylegan2.Discriminator, encode: Callable,
               cfg: StepConfig, g_tx, d_tx, state: GANState, batch: dict, key,
               with_r1: bool, condition: Callable, clip_space: Callable,
               skip_nonfinite: bool = False):
    """One G+D update on {'image' uint8, 'embedding'}: ``condition(embedding, rng)`` is the
    C^3 train transform, ``clip_space(e)`` maps the frozen CLIP embedding ``encode(images in
    [-1, 1])`` of a generated image for the itc term; ``with_r1`` (StyleGAN2's lazy
    regularization) adds the R1 penalty to the D loss. Returns (state, metrics)."""
    z_dim = gen.config.z_dim
    d_apply = lambda p, x, c: disc.apply({"params": p}, x, c)

    def d_loss_fn(d_params, real, fake, cond):
        fake_logits, _ = d_apply(d_params, fake, cond)
        real_logits, real_feat = d_apply(d_params, real, cond)
        adv = jax.nn.softplus(fake_logits).mean() + jax.nn.softplus(-real_logits).mean()
        itd = contrastive_loss(real_feat, cond, cfg.temperature)
        r1 = r1_penalty(d_apply, d_params, real, cond) if with_r1 else jnp.zeros(())
        loss = adv + cfg.itd_weight * itd + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
        return loss, {"d_adv": adv, "d_itd": itd, "r1": r1}

    def g_loss_fn(g_params, d_params, z, cond, noise_rng):
        fake = gen.apply({"params": g_params}, z, cond, noise_rng)
        logits, feat = d_apply(d_params, fake, cond)
        adv = jax.nn.softplus(-logits).mean()
        itd = contrastive_loss(feat, cond, cfg.temperature)
        itc = contrastive_loss(clip_space(encode(fake)), cond, cfg.temperature)
        loss = adv + cfg.itd_weight * itd + cfg.itc_weight * itc
        return loss, {"g_adv": adv, "g_itd": itd, "g_itc": itc}

    keys = jax.random.split(jax.random.fold_in(key, state.step), 5)
    b = batch["embedding"].shape[0]
    cond = condition(batch["embedding"], keys[0])
    real = to_unit_range(batch["image"])
    fake = gen.apply({"params": state.g_params}, jax.random.normal(keys[1], (b, z_dim)),
                     cond, keys[2])
    d_grads, d_metrics = jax.grad(d_loss_fn, has_aux=True)(
        state.d_params, real, jax.lax.stop_gradient(fake), cond)
    d_updates, d_opt = d_tx.update(d_grads, state.d_opt, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)
    (g_loss, g_metrics), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g_params, d_params, jax.random.normal(keys[3], (b, z_dim)), cond, keys[4])
    g_updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)
    beta = ema_beta(cfg, state.step)
    ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.ema, g_params)
    metrics = {**d_metrics, **g_metrics, "g_loss": g_loss,
               "g_grad_norm": optax.tree.norm(g_grads), "d_grad_norm": optax.tree.norm(d_grads)}
    new = GANState(state.step + 1, g_params, d_params, g_opt, d_opt, ema)
    return st.guard_finite(new, state, metrics, skip_nonfinite)


def check_method(name: str) -> None:
    """Raises unless ``name`` is a method a generator can train with (any but decap)."""
    c3.check_method(name)
    if name == "decap":
        raise ValueError("decap projects onto a memory of the training modality at "
                         "inference: it has no text-to-image form here")


def make_train_step(gen: stylegan2.Generator, disc: stylegan2.Discriminator,
                    encode: Callable, cfg: StepConfig, g_tx, d_tx, mesh, shardings,
                    skip_nonfinite: bool = False):
    """One sharded ``gan_update`` with the method's training transform (``c3.member_train``
    with its settings as arrays; ``with_r1`` static: two compiled variants)."""
    def step(state: GANState, batch: dict, settings: dict, key, with_r1: bool):
        condition = lambda e, rng: c3.member_train(settings, e, rng)
        clip_space = lambda e: c3.member_train(settings, e)
        return gan_update(gen, disc, encode, cfg, g_tx, d_tx, state, batch, key, with_r1,
                          condition, clip_space, skip_nonfinite)

    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh), repl, repl),
                   out_shardings=(shardings, repl), static_argnums=4, donate_argnums=0)


def make_generate(gen: stylegan2.Generator, mesh):
    """(params, embeddings, settings, key) -> uint8 images, conditioned on the method's
    inference transform of the embeddings (``c3.member_eval``)."""
    def fn(params, embedding, settings, key):
        cond = c3.member_eval(settings, embedding)
        z_key, noise_key = jax.random.split(key)
        z = jax.random.normal(z_key, (embedding.shape[0], gen.config.z_dim))
        return to_uint8(gen.apply({"params": params}, z, cond, noise_key))

    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(fn, in_shardings=(None, parallel.batch_sharding(mesh), None, None),
                   out_shardings=repl)  # every process gets all images


# ---------------------------------------------------------------------------
# Data


class ImageRows:
    """Random-access {'image', 'embedding'} rows of a split (the training pairs)."""

    def __init__(self, source, image_field: str, embedding_field: str):
        first = source[0]
        for field in (image_field, embedding_field):
            if field not in first:
                raise KeyError(f"dataset has no field {field!r}; it has {sorted(first)}")
        shape = np.shape(first[image_field])
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
            raise ValueError(f"{image_field!r} must hold square RGB images [R, R, 3], got {shape}")
        if np.ndim(first[embedding_field]) != 1:
            raise ValueError(f"{embedding_field!r} must hold one embedding per row, got shape "
                             f"{np.shape(first[embedding_field])}")
        self.source, self.image_field, self.field = source, image_field, embedding_field
        self.resolution, self.dim = shape[0], np.shape(first[embedding_field])[0]

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        key = f"{self.source!r}|{self.image_field}|{self.field}"
        return f"ImageRows({hashlib.sha1(key.encode()).hexdigest()[:12]}, n={len(self)})"

    def __getitem__(self, i: int) -> dict:
        ex = self.source[int(i)]
        return {"image": np.asarray(ex[self.image_field], np.uint8),
                "embedding": np.asarray(ex[self.field], np.float32)}


# ---------------------------------------------------------------------------
# Training


class Encoder:
    """A frozen image encoder for the itc term and CLIP-space statistics:
    ``fn(params, images in [-1, 1] NHWC) -> embeddings``."""

    def __init__(self, fn: Callable, params):
        self.fn, self.params = fn, params
        # uint8 images -> embeddings, compiled once per encoder (not per scorer or member)
        self.encode_uint8 = jax.jit(lambda p, x: fn(p, to_unit_range(x)))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.fn(self.params, images)


def clip_encoder(path: str) -> Encoder:
    """The image tower of a Hugging Face CLIP directory, with CLIP's preprocessing."""
    module, params = clip.from_pretrained(path)
    prep = ImagePreprocessor.from_pretrained(path)
    return tower_encoder(module, params, prep.mean, prep.std)


def tower_encoder(module: clip.CLIP, params, mean, std) -> Encoder:
    """A CLIP's image tower on images in [-1, 1]: resized to its input size, normalized
    with ``mean``/``std``."""
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def fn(p, images):
        size = module.config.image_size
        x = jax.image.resize((images + 1.0) / 2.0, (images.shape[0], size, size, 3), "bilinear")
        x = jnp.transpose((x - mean) / std, (0, 3, 1, 2))
        return module.apply({"params": p}, x, method="encode_image")

    return Encoder(fn, params)


class Run:
    """What training and evaluation share: config, mesh, data, models, transform."""

    def __init__(self, config, wd: Workdir, encoder: Optional[Encoder] = None):
        self.config, self.wd = config, wd
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.make_mesh(config.fsdp)
        self.train_source = builders.data_source(config.dataset_dir, config.train_split)
        self.rows = ImageRows(self.train_source, config.image_field, config.train_field)
        self.encoder = encoder or clip_encoder(config.clip)
        self._check_encoder()
        self.gan = gan_config(config, self.rows.dim, self.rows.resolution)
        self.gen, self.disc = stylegan2.Generator(self.gan), stylegan2.Discriminator(self.gan)
        check_method(config.variant)
        self.tx = optimizer(config)
        self._moments: dict = {}

    def _check_encoder(self) -> None:
        r = self.rows.resolution
        out = jax.eval_shape(self.encoder, jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32))
        if out.shape[-1] != self.rows.dim:
            raise ValueError(f"the image encoder gives {out.shape[-1]}-d embeddings but "
                             f"{self.config.train_field!r} is {self.rows.dim}-d; use the CLIP "
                             "that embedded the dataset")

    def moments(self, field: str) -> c3.Moments:
        """Per-dimension mean and std of ``field`` over the training split."""
        if field not in self._moments:
            self._moments[field] = cd.field_moments(self.train_source, field)
        return self._moments[field]

    def settings(self, method: str, sigma: float, noise: Optional[dict] = None) -> dict:
        """``c3.member_settings`` of a method trained on the config's ``train_field`` and
        conditioned on its ``eval_field`` at inference."""
        field = self.config.train_field
        train, evaluation = self.moments(field), self.moments(self.config.eval_field)
        centroid = cd.method_centroid(method, self.train_source, field, train, evaluation)
        return c3.member_settings(method, sigma, train, evaluation, noise, centroid=centroid)

    def own_settings(self) -> dict:
        """The settings of the config's own method and sigma."""
        config = self.config
        noise = cd.noise_model(config) if config.variant == "c3_aniso" else None
        return self.settings(config.variant, cd.config_sigma(config), noise)

    def init_state(self) -> GANState:
        return init_state(self.gen, self.disc, self.tx, self.gan, jax.random.key(self.config.seed))

    def shardings(self):
        abstract = jax.eval_shape(self.init_state)
        return abstract, parallel.state_shardings(self.mesh, abstract)


def init_state(gen, disc, tx, cfg: stylegan2.GANConfig, key) -> GANState:
    """Initial G and D params (from ``key``), their Adam states, and the EMA generator."""
    z, c = jnp.zeros((2, cfg.z_dim)), jnp.zeros((2, cfg.cond_dim))
    img = jnp.zeros((2, cfg.resolution, cfg.resolution, 3))
    g_key, d_key = jax.random.split(key)
    g = gen.init(g_key, z, c)["params"]
    d = disc.init(d_key, img, c)["params"]
    return GANState(jnp.zeros((), jnp.int32), g, d, tx.init(g), tx.init(d), g)


def check_batch(config, rows: ImageRows) -> int:
    if config.batch_size % config.mbstd_group and config.batch_size > config.mbstd_group:
        raise ValueError(f"batch_size={config.batch_size} must be a multiple of "
                         f"mbstd_group={config.mbstd_group}")
    return parallel.local_batch_size(config.batch_size, len(rows), "training images")


def train(run: Run) -> tuple:
    """Trains (or resumes) in ``run.wd``; returns (the EMA generator params, summary)."""
    config, wd = run.config, run.wd
    local_batch = check_batch(config, run.rows)
    abstract, shardings = run.shardings()
    settings = run.own_settings()
    step_fn = make_train_step(run.gen, run.disc, run.encoder, StepConfig.from_config(config),
                              run.tx, run.tx, run.mesh, shardings, config.skip_nonfinite)
    data = iter(pipeline.make_loader(run.rows, local_batch, config.seed))
    ckpts = checkpoints.Checkpoints(wd.file("checkpoints"), config.keep_checkpoints)
    state, start = ckpts.resume_or_init(abstract, shardings, data,
                                        jax.jit(run.init_state, out_shardings=shardings))
    key = jax.random.key(config.seed)
    state, last, _ = loop.fit(
        state, start, lambda s, batch, i: step_fn(s, batch, settings, key,
                                                  i % config.r1_every == 0),
        data, parallel.batch_sharding(run.mesh), ckpts, wd,
        loop.LoopConfig(config.max_steps, config.log_every, config.checkpoint_every,
                        config.skip_nonfinite, "train G+D", ("g_adv", "d_adv")),
        learning_rate=lambda i: config.lr)
    summary = {"steps": config.max_steps, "resumed_from": start,
               "train_images": len(run.rows), "final_metrics": last}
    return state.ema, summary


def restore_ema(run: Run, run_dir: str):
    """The EMA generator of another run's latest checkpoint (evaluation only)."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ directory; pass the --workdir "
                                "of a finished generation run")
    abstract, shardings = run.shardings()
    return checkpoints.restore_state(directory, checkpoints.abstract(abstract, shardings)).ema


# ---------------------------------------------------------------------------
# Evaluation: generate from the other modality's embeddings


def _batches(source, config, limit: int, field: str):
    """(embeddings [b, d] of ``field``, each row's first when it holds several, real images,
    captions) batches."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    size = config.eval_batch_size
    for start in range(0, n, size):
        rows = [source[i] for i in range(start, min(start + size, n))]
        e = np.stack([np.asarray(r[field], np.float32) for r in rows])
        e = e[:, 0] if e.ndim == 3 else e
        if not np.isfinite(e).all():
            raise ValueError(f"{field!r} embeddings contain NaN or Inf")
        images = np.stack([np.asarray(r[config.image_field], np.uint8) for r in rows])
        yield e, images, [cd.captions_of(r, config.caption_field)[0] for r in rows]


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
    extra = -len(x) % multiple
    return x if not extra else np.concatenate([x, np.repeat(x[-1:], extra, 0)])


class ImageScores:
    """Scores of generated images, accumulated batch by batch: the Fréchet distance to the
    real images in the encoder's (CLIP) space, the CLIP score against the conditioning text
    embeddings, and FID/IS when an Inception is given."""

    def __init__(self, encoder: Encoder, inception=None):
        self.encoder, self.inception = encoder, inception
        self.stats = {k: im.FeatureStats() for k in ("clip_fake", "clip_real", "inc_fake",
                                                     "inc_real")}
        self.clip_scores, self.logits = [], []

    def update(self, fake: np.ndarray, real: np.ndarray, text: np.ndarray) -> None:
        encode = lambda images: np.asarray(self.encoder.encode_uint8(self.encoder.params, images))
        f_fake = encode(fake)
        self.stats["clip_fake"].update(f_fake)
        self.stats["clip_real"].update(encode(real))
        self.clip_scores.append(np.sum(_unit(f_fake) * _unit(text), -1))
        if self.inception is not None:
            for name, batch in (("inc_fake", fake), ("inc_real", real)):
                feats, lg = self.inception(batch)
                self.stats[name].update(feats)
                if name == "inc_fake":
                    self.logits.append(lg)

    def result(self) -> dict:
        stats = self.stats
        metrics = {"clip_frechet_distance": im.frechet_distance_of_stats(stats["clip_fake"],
                                                                         stats["clip_real"]),
                   "clip_score": float(np.mean(np.concatenate(self.clip_scores))),
                   "num_generated": stats["clip_fake"].count}
        if self.inception is None:
            metrics["FID_skipped"] = ("no inception_weights file given (the standard FID "
                                      "Inception weights, pt_inception-2015-12-05-6726825d.pth)")
        else:
            metrics["FID"] = im.frechet_distance_of_stats(stats["inc_fake"], stats["inc_real"])
            logits = np.concatenate(self.logits)
            metrics["IS"], metrics["IS_std"] = im.inception_score(logits, min(10, len(logits)))
        return metrics


def test_batches(config, limit: int = 0, field: str = ""):
    """The test split's batches (embeddings of ``field``, by default ``eval_field``: the
    text's; real images; captions), with a progress bar."""
    source = builders.data_source(config.dataset_dir, config.test_split)
    total = len(source) if limit <= 0 else min(limit, len(source))
    return progress_bar(_batches(source, config, limit, field or config.eval_field),
                        desc="generate", unit="batch",
                        total=-(-total // config.eval_batch_size))


def evaluate(run: Run, params, limit: int = 0) -> dict:
    """Images from the test split's text embeddings (first caption of each row), scored by
    ``ImageScores``; returns metrics, samples and generated images."""
    config = run.config
    settings = run.own_settings()  # Collapse with the *text* mean at test time
    generate = make_generate(run.gen, run.mesh)
    scores = ImageScores(run.encoder, inception_of(config.inception_weights))
    images, captions = [], []
    key = jax.random.key(config.seed + 1)
    for i, (e, real, caps) in enumerate(test_batches(config, limit)):
        fake = np.asarray(generate(params, _global(_pad(e, jax.device_count()), run.mesh),
                                   settings, jax.random.fold_in(key, i)))[: len(e)]
        scores.update(fake, real, e)
        images.append(fake)
        captions += caps
    return {"metrics": scores.result(), "images": np.concatenate(images), "captions": captions}


def _global(x: np.ndarray, mesh) -> jax.Array:
    """A batch every process holds in full, as a global array split over the devices."""
    return parallel.put_whole(x, parallel.batch_sharding(mesh))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def inception_of(path: str):
    """A jitted (uint8 images) -> (pool features, logits) of the FID Inception, or None."""
    if not path:
        return None
    fn = inception.make_feature_fn(*inception.load_fid_inception(path))
    return lambda images: tuple(np.asarray(a) for a in fn(images))
