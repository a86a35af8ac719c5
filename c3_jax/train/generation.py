"""C^3 text-to-image's parts: a LAFITE-conditioned StyleGAN2 trained on image embeddings
only (Collapse with the image mean, Corrupt with noise) and evaluated from text embeddings
(Collapse with the text mean). The trainer that runs them (a single run is a sweep of one
member) is ``gan_sweep``.

One step (``gan_update``) updates the generator (non-saturating loss, LAFITE's contrastive
terms between discriminator features / the frozen CLIP's embedding of the generated image
and the condition; the lazy path-length penalty) and the discriminator (non-saturating
logistic loss, LAFITE's contrastive term on real images, lazy R1), then the EMA generator.
Noise, latents and the C^3 noise come from the seed folded with the step. Here too: the
training rows, the frozen encoder, and the scores and FID protocol of generated images.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from c3_jax import c3, parallel
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.data.images import ImagePreprocessor
from c3_jax.eval import image_metrics as im
from c3_jax.models import clip, inception, lafite_import, stylegan2
from c3_jax.progress import progress_bar
from c3_jax.train import state as st

@flax.struct.dataclass
class GANState:
    """Everything a generation checkpoint holds besides the data iterator."""
    step: jax.Array
    g_params: dict
    d_params: dict
    g_opt: optax.OptState
    d_opt: optax.OptState
    ema: dict
    pl_mean: jax.Array = 0.0  # the path-length penalty's running mean of lengths


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The loss weights and schedules the jitted step depends on (static). Defaults are
    LAFITE's (drboog/Lafite ``train.py``, ``training/loss.py::StyleGAN2Loss``,
    ``training/training_loop.py``) at batch 16: R1 every 16 steps at gamma 10, the
    path-length penalty every 4 steps (weight 2, decay 0.01, batch shrink 2), style mixing
    with probability 0.9, contrastive terms itd = itc = 10 at temperature 0.5 with lam 0,
    EMA half-life batch * 10 / 32 kimg with ramp-up 0.05 (none when resuming), x-flips
    (``--mirror=1``, the C^3 scripts). Not kept: ADA augmentation (LAFITE and the C^3 scripts
    train with ``--aug=noaug``); the iid / iic terms (weight 0 in every command); float16
    layers (we train in float32, ``conv_clamp`` keeps their clamp)."""
    batch_size: int
    r1_gamma: float = 10.0
    r1_every: int = 16
    itd_weight: float = 10.0
    itc_weight: float = 10.0
    temperature: float = 0.5
    contra_lam: float = 0.0
    ema_kimg: float = 5.0
    ema_rampup: float = 0.05
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing: float = 0.9
    mirror: bool = True
    itc_crop: bool = True
    itc_space: str = "clip"  # ITC_SPACES

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        """The step's fields from a generation config (``ema_rampup`` 0 when ``generator.init_from``
        names a checkpoint: LAFITE turns the ramp-up off when resuming)."""
        values = {f.name: config.generator[f.name] for f in dataclasses.fields(cls)}
        if config.generator.init_from:
            values["ema_rampup"] = 0.0
        return cls(**values)


def gan_config(config, cond_dim: int, resolution: int) -> stylegan2.GANConfig:
    g = config.generator
    return stylegan2.GANConfig(resolution=resolution, cond_dim=cond_dim, z_dim=g.z_dim,
                               w_dim=g.w_dim, mapping_layers=g.mapping_layers,
                               cond_hidden=g.cond_hidden, channel_base=g.channel_base,
                               channel_max=g.channel_max, mbstd_group=g.mbstd_group,
                               architecture=g.architecture, d_cond_sum=g.d_cond_sum,
                               conv_clamp=g.conv_clamp)


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam (eps 1e-8) as a value: optax's ``init`` and ``update``, equal and equally hashed
    for equal settings, so the compiled step that takes it as a static argument is traced
    once per setting."""
    lr: float
    b1: float
    b2: float

    def transform(self) -> optax.GradientTransformation:
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=1e-8)

    def init(self, params):
        return self.transform().init(params)

    def update(self, grads, opt_state, params=None):
        return self.transform().update(grads, opt_state, params)


def optimizer(config, reg_every: int = 0) -> Adam:
    """StyleGAN2's Adam (lr 2.5e-3, betas (0, 0.99), eps 1e-8); with lazy regularization
    every ``reg_every`` steps, lr and betas rescaled by r = reg_every / (reg_every + 1)
    (lr * r, beta ** r: ``training_loop.py``; G's r = 4/5, D's 16/17)."""
    r = reg_every / (reg_every + 1.0) if reg_every > 0 else 1.0
    g = config.generator
    return Adam(g.lr * r, g.beta1 ** r, g.beta2 ** r)


# ---------------------------------------------------------------------------
# Losses and the step


def contra_loss(temp: float, a: jax.Array, b: jax.Array, lam: float) -> jax.Array:
    """LAFITE's ``contra_loss`` (``training/loss.py``), per row [B]: with S the cosine
    matrix of ``a`` and ``b`` and E = exp(S / temp) (the double exponential its authors keep
    because their hyperparameters depend on it), p1 = diag softmax(E) over rows * temp and
    p2 = diag softmax(E) over columns * temp; returns lam log p1 + (1 - lam) log p2 (lam 0:
    log p2; lam >= 1: log p1); temp 0: the diagonal of S. Callers subtract weight x mean."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    sim = unit(a) @ unit(b).T
    if temp <= 0:
        return jnp.diagonal(sim)
    e = jnp.exp(sim / temp)
    log_p1 = jnp.diagonal(jax.nn.log_softmax(e, axis=1)) + jnp.log(temp)
    log_p2 = jnp.diagonal(jax.nn.log_softmax(e, axis=0)) + jnp.log(temp)
    if 0.0 < lam < 1.0:
        return lam * log_p1 + (1.0 - lam) * log_p2
    return log_p2 if lam == 0 else log_p1


def r1_penalty(d_apply: Callable, d_params, real: jax.Array, cond: jax.Array) -> jax.Array:
    """Mean over the batch of |grad_x D(x, c)|^2 at real images."""
    grad = jax.grad(lambda x: d_apply(d_params, x, cond)[0].sum())(real)
    return jnp.square(grad).sum(axis=(1, 2, 3)).mean()


def ema_beta(cfg: StepConfig, step: jax.Array) -> jax.Array:
    """StyleGAN2's EMA decay after step ``step`` (0-based): half-life ``ema_kimg`` thousand
    images, with ramp-up at most ``ema_rampup`` x the images seen before the step."""
    half_life = jnp.asarray(cfg.ema_kimg * 1000.0, jnp.float32)
    if cfg.ema_rampup > 0:
        seen = step.astype(jnp.float32) * cfg.batch_size
        half_life = jnp.minimum(half_life, seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / jnp.maximum(half_life, 1e-8))


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255]."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Each NHWC image mirrored left-right with probability 1/2 (LAFITE's ``--mirror``)."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def cubic_weights(t: jax.Array) -> list:
    """torch's bicubic convolution weights (A = -0.75) of the 4 taps around offset ``t``."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(size_out: int, start: jax.Array, length: jax.Array,
                   size_in: int) -> jax.Array:
    """[size_out, size_in]: ``F.interpolate(mode='bicubic', align_corners=False)`` of the
    window [start, start + length) of an axis resized to ``size_out`` (edge taps clamped
    to the window), as a matrix; ``start`` and ``length`` may be traced."""
    length = jnp.asarray(length, jnp.float32)
    src = (jnp.arange(size_out, dtype=jnp.float32) + 0.5) * (length / size_out) - 0.5
    base = jnp.floor(src)
    out = jnp.zeros((size_out, size_in), jnp.float32)
    for k, w in enumerate(cubic_weights(src - base)):
        idx = jnp.clip(base + k - 1, 0, length - 1).astype(jnp.int32) + start
        out = out + w[:, None] * jax.nn.one_hot(idx, size_in, dtype=jnp.float32)
    return out


def full_preprocess(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """LAFITE's ``full_preprocess`` (``training/loss.py``) with 224 read as ``size`` (the
    image encoder's input size), on NHWC images in [-1, 1]: images larger than or as
    large as ``size`` lose a random square crop of side in [res / 2, res) (one per batch)
    resized bicubically to ``size``; smaller ones are padded with 1 (white) at a random
    offset to ``size``. CLIP's normalization is the encoder's."""
    r = images.shape[1]
    k_cut, k_left, k_top = jax.random.split(rng, 3)
    if r < size:
        left = jax.random.randint(k_left, (), 0, size - r)
        top = jax.random.randint(k_top, (), 0, size - r)
        canvas = jnp.ones((images.shape[0], size, size, images.shape[-1]), images.dtype)
        return jax.lax.dynamic_update_slice(canvas, images, (0, top, left, 0))
    cut = jax.random.randint(k_cut, (), int(0.5 * r), r)
    left = jax.random.randint(k_left, (), 0, r - cut)
    top = jax.random.randint(k_top, (), 0, r - cut)
    rows, cols = bicubic_matrix(size, top, cut, r), bicubic_matrix(size, left, cut, r)
    return jnp.einsum("oh,bhwc,pw->bopc", rows, images, cols,
                      precision=jax.lax.Precision.HIGHEST)


def g_main_objective(cfg: StepConfig, logits, d_feat, clip_feat, cond) -> tuple:
    """LAFITE's Gmain loss (``StyleGAN2Loss.accumulate_gradients``): mean softplus(-D(G))
    - itc x mean contra(CLIP(G), c) - itd x mean contra(D-features(G), c); (loss,
    metrics), the contrastive metrics as the losses' terms (-mean contra)."""
    contra = lambda a: contra_loss(cfg.temperature, a, cond, cfg.contra_lam).mean()
    adv, itd, itc = jax.nn.softplus(-logits).mean(), -contra(d_feat), -contra(clip_feat)
    loss = adv + cfg.itd_weight * itd + cfg.itc_weight * itc
    return loss, {"g_adv": adv, "g_itd": itd, "g_itc": itc}


def d_main_objective(cfg: StepConfig, fake_logits, real_logits, real_feat, cond) -> tuple:
    """LAFITE's Dmain loss: mean softplus(D(fake)) + mean softplus(-D(real)) - itd x mean
    contra(D-features(real), c); (loss, metrics)."""
    adv = jax.nn.softplus(fake_logits).mean() + jax.nn.softplus(-real_logits).mean()
    itd = -contra_loss(cfg.temperature, real_feat, cond, cfg.contra_lam).mean()
    return adv + cfg.itd_weight * itd, {"d_adv": adv, "d_itd": itd}


def pl_objective(grads: jax.Array, pl_mean: jax.Array, decay: float) -> tuple:
    """The path-length penalties [B] from the gradients against ws [B, num_ws, w_dim]:
    lengths sqrt(mean over layers of |g|^2), the running mean moved toward their mean by
    ``decay`` (with its gradient, as StyleGAN2's), (length - mean)^2; and the new mean."""
    lengths = jnp.sqrt(jnp.square(grads).sum(2).mean(1))
    mean = pl_mean + decay * (lengths.mean() - pl_mean)
    return jnp.square(lengths - mean), jax.lax.stop_gradient(mean)


def generator_ws(gcfg: stylegan2.GANConfig, g_params, z: jax.Array, rng: jax.Array,
                 mixing: float) -> jax.Array:
    """LAFITE's ``run_G`` ws [B, num_ws, w_dim]: the mapping of ``z``, and with probability
    ``mixing`` the layers from a cutoff drawn in [1, num_ws) on take a second latent's w."""
    ws = stylegan2.broadcast_ws(stylegan2.mapping_apply(gcfg, g_params, z), gcfg.num_ws)
    if mixing <= 0:
        return ws
    k_z, k_cut, k_p = jax.random.split(rng, 3)
    other = stylegan2.mapping_apply(gcfg, g_params, jax.random.normal(k_z, z.shape, z.dtype))
    cutoff = jax.random.randint(k_cut, (), 1, gcfg.num_ws)
    cutoff = jnp.where(jax.random.uniform(k_p) < mixing, cutoff, gcfg.num_ws)
    return stylegan2.mix_ws(ws, stylegan2.broadcast_ws(other, gcfg.num_ws), cutoff)


def path_length_penalty(gcfg: stylegan2.GANConfig, g_params, ws: jax.Array, cond: jax.Array,
                        rng: jax.Array, pl_mean: jax.Array, decay: float):
    """StyleGAN2's path-length penalty (``StyleGAN2Loss`` ``Gpl``): lengths |J_w^T y| of
    the images' gradient against ws for y ~ N(0, I) / res, the running mean moved toward
    their mean by ``decay`` (with gradient, as there); returns (penalties [B], new mean)."""
    k_noise, k_img = jax.random.split(rng)
    r = gcfg.resolution
    y = jax.random.normal(k_noise, (ws.shape[0], r, r, 3)) / np.sqrt(r * r)
    grads = jax.grad(lambda w: jnp.sum(
        stylegan2.synthesis_apply(gcfg, g_params, w, cond, k_img) * y))(ws)
    return pl_objective(grads, pl_mean, decay)


def train_condition(s: dict, e: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    """The generator's training condition (no noise without ``rng``): ``c3.member_train``
    of settings ``s``, applied to its own noiseless output first where ``s['twice']`` is set
    (the C^3 code subtracts the image mean in ``dataset.py`` and again in ``loss.py``)."""
    once = c3.member_train(s, e)
    twice = jnp.asarray(s.get("twice", 0.0)) > 0
    return c3.member_train(s, jnp.where(twice, once, e), rng)


# What the itc term compares with the condition: "clip", the generated image's L2-normalized
# CLIP embedding, uncollapsed (LAFITE's and the C^3 code's ``training/loss.py``); "condition",
# that embedding through the member's training transform without noise (the condition's own
# space: Collapse applied to both sides, as this project did before following the official
# code).
ITC_SPACES = ("clip", "condition")


def itc_features(space: str, s: dict) -> Callable:
    """The map of the generated image's CLIP embedding into the itc term (``ITC_SPACES``),
    for a member of settings ``s``."""
    if space == "condition":
        return lambda f: train_condition(s, f)
    if space != "clip":
        raise ValueError(f"itc_space={space!r} must be one of {ITC_SPACES}")
    return c3.normalize


def gan_update(gen: stylegan2.Generator, disc: stylegan2.Discriminator, encode: Callable,
               cfg: StepConfig, g_tx, d_tx, state: GANState, batch: dict, key,
               regs: tuple, condition: Callable, skip_nonfinite: bool = False,
               image_size: int = 0, clip_space: Callable = c3.normalize):
    """One training step of LAFITE's ``training_loop.py`` on {'image' uint8, 'embedding'}:
    its phases in order, each with its own latents and condition noise: Gmain, Greg (the
    path-length penalty, when ``regs[0]``), Dmain, Dreg (R1, when ``regs[1]``), each an
    Adam step; then the EMA. ``condition(embedding, rng)`` is the method's train transform;
    ``encode(images in [-1, 1])`` the frozen CLIP whose embedding of ``full_preprocess``'d
    generated images (to ``image_size``; 0: the images as they are) enters the itc term
    through ``clip_space`` (by default L2-normalized and uncollapsed, as LAFITE's and the
    C^3 ``training/loss.py::StyleGAN2Loss.accumulate_gradients``; ``itc_features``).
    Negatives of the contrastive terms: the whole batch. Returns (state, metrics)."""
    gcfg = gen.config
    with_pl, with_r1 = regs if isinstance(regs, tuple) else (False, regs)  # bool: R1 only
    d_apply = lambda p, x, c: disc.apply({"params": p}, x, c)
    keys = jax.random.split(jax.random.fold_in(key, state.step), 14)
    e = batch["embedding"]
    b = e.shape[0]
    real = to_unit_range(batch["image"])
    if cfg.mirror:
        real = random_flip(keys[0], real)
    z_of = lambda k, n=b: jax.random.normal(k, (n, gcfg.z_dim))

    def fake_of(g_params, z, cond, rng):
        k_ws, k_noise = jax.random.split(rng)
        ws = generator_ws(gcfg, g_params, z, k_ws, cfg.style_mixing)
        return stylegan2.synthesis_apply(gcfg, g_params, ws, cond, k_noise)

    def g_main(g_params, cond, rng):
        k_z, k_fake, k_crop = jax.random.split(rng, 3)
        fake = fake_of(g_params, z_of(k_z), cond, k_fake)
        logits, feat = d_apply(state.d_params, fake, cond)
        crop = full_preprocess(k_crop, fake, image_size) if image_size and cfg.itc_crop else fake
        return g_main_objective(cfg, logits, feat, clip_space(encode(crop)), cond)

    def g_reg(g_params, cond, rng):
        k_z, k_ws, k_pl = jax.random.split(rng, 3)
        n = max(b // cfg.pl_batch_shrink, 1)
        ws = generator_ws(gcfg, g_params, z_of(k_z, n), k_ws, cfg.style_mixing)
        penalty, mean = path_length_penalty(gcfg, g_params, ws, cond[:n], k_pl, state.pl_mean,
                                            cfg.pl_decay)
        return (penalty * cfg.pl_weight).mean() * cfg.pl_every, (penalty.mean(), mean)

    def d_main(d_params, fake, cond):
        fake_logits, _ = d_apply(d_params, fake, cond)
        real_logits, real_feat = d_apply(d_params, real, cond)
        return d_main_objective(cfg, fake_logits, real_logits, real_feat, cond)

    def d_reg(d_params, cond):
        r1 = r1_penalty(d_apply, d_params, real, cond)
        return r1 * (cfg.r1_gamma / 2) * cfg.r1_every, r1

    def adam(tx, grads, opt, params):
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    (g_loss, g_metrics), g_grads = jax.value_and_grad(g_main, has_aux=True)(
        state.g_params, condition(e, keys[1]), keys[2])
    g_params, g_opt = adam(g_tx, g_grads, state.g_opt, state.g_params)
    pl, pl_mean = jnp.zeros(()), jnp.asarray(state.pl_mean, jnp.float32)
    if with_pl and cfg.pl_weight > 0:
        pl_grads, (pl, pl_mean) = jax.grad(g_reg, has_aux=True)(
            g_params, condition(e, keys[3]), keys[4])
        g_params, g_opt = adam(g_tx, pl_grads, g_opt, g_params)
    cond = condition(e, keys[5])
    fake = jax.lax.stop_gradient(fake_of(g_params, z_of(keys[6]), cond, keys[7]))
    d_grads, d_metrics = jax.grad(d_main, has_aux=True)(state.d_params, fake, cond)
    d_params, d_opt = adam(d_tx, d_grads, state.d_opt, state.d_params)
    r1 = jnp.zeros(())
    if with_r1 and cfg.r1_gamma > 0:
        r1_grads, r1 = jax.grad(d_reg, has_aux=True)(d_params, condition(e, keys[8]))
        d_params, d_opt = adam(d_tx, r1_grads, d_opt, d_params)
    beta = ema_beta(cfg, state.step)
    ema = jax.tree.map(lambda m, p: p + beta * (m - p), state.ema, g_params)
    metrics = {**d_metrics, **g_metrics, "r1": r1, "pl_penalty": pl, "g_loss": g_loss,
               "g_grad_norm": optax.tree.norm(g_grads), "d_grad_norm": optax.tree.norm(d_grads)}
    new = GANState(state.step + 1, g_params, d_params, g_opt, d_opt, ema, pl_mean)
    return st.guard_finite(new, state, metrics, skip_nonfinite)


def check_init_from(config) -> None:
    """Raises (one line naming the first mismatched key) unless ``generator.init_from`` is a LAFITE
    pickle whose networks fit this config's sizes and dataset."""
    rows = ImageRows(builders.data_source(config.data.dataset_dir, config.data.train_split),
                     config.data.image_field, config.data.train_field)
    lafite_import.load(config.generator.init_from, gan_config(config, rows.dim, rows.resolution))


def check_method(name: str) -> None:
    """Raises unless ``name`` is a method a generator can train with (any but decap)."""
    c3.check_method(name)
    if name == "decap":
        raise ValueError("decap projects onto a memory of the training modality at "
                         "inference: it has no text-to-image form here")


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
# The frozen image encoder, initial state, batches


class Encoder:
    """A frozen image encoder for the itc term and CLIP-space statistics:
    ``fn(params, images in [-1, 1] NHWC) -> embeddings``; ``image_size``: its input size
    (0: unknown; the itc term then encodes generated images without LAFITE's crop). The
    compiled programs take ``fn`` as a static argument and ``params`` as an array
    argument: an ``fn`` that is a value (``TowerFn``) is traced once per setting."""

    def __init__(self, fn: Callable, params, image_size: int = 0):
        self.fn, self.params, self.image_size = fn, params, image_size

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.fn(self.params, images)

    def encode_uint8(self, images) -> jax.Array:
        """uint8 images [n, H, W, 3] -> embeddings."""
        return encode_uint8(self.params, images, fn=self.fn)


@functools.partial(jax.jit, static_argnames="fn")
def encode_uint8(params, images, *, fn: Callable) -> jax.Array:
    return fn(params, to_unit_range(images))


@dataclasses.dataclass(frozen=True)
class TowerFn:
    """A CLIP's image tower on images in [-1, 1]: resized to its input size, normalized
    with ``mean``/``std`` (an ``Encoder``'s ``fn``)."""
    module: clip.CLIP
    mean: tuple
    std: tuple

    def __call__(self, p, images: jax.Array) -> jax.Array:
        size = self.module.config.image_size
        x = (images + 1.0) / 2.0
        if images.shape[1:3] != (size, size):
            x = jax.image.resize(x, (images.shape[0], size, size, 3), "bilinear")
        x = jnp.transpose((x - jnp.asarray(self.mean)) / jnp.asarray(self.std), (0, 3, 1, 2))
        return self.module.apply({"params": p}, x, method="encode_image")


def check_encoder(encoder: Encoder, rows: "ImageRows", field: str) -> None:
    """Raises unless ``encoder`` embeds the rows' images in the width of their ``field``."""
    r = rows.resolution
    out = jax.eval_shape(encoder, jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32))
    if out.shape[-1] != rows.dim:
        raise ValueError(f"the image encoder gives {out.shape[-1]}-d embeddings but "
                         f"{field!r} is {rows.dim}-d; use the CLIP that embedded the dataset")


def clip_encoder(path: str) -> Encoder:
    """The image tower of a Hugging Face CLIP directory, with CLIP's preprocessing."""
    module, params = clip.from_pretrained(path)
    prep = ImagePreprocessor.from_pretrained(path)
    return tower_encoder(module, params, prep.mean, prep.std)


def tower_encoder(module: clip.CLIP, params, mean, std) -> Encoder:
    """A CLIP's image tower on images in [-1, 1] (``TowerFn``) with its params."""
    values = lambda v: tuple(float(x) for x in np.asarray(v, np.float32).reshape(-1))
    return Encoder(TowerFn(module, values(mean), values(std)), params,
                   module.config.image_size)


# The variants the C^3 scripts run with --remove_mean (whose image mean its code subtracts
# twice); for other methods ``collapse_twice`` changes nothing.
DOUBLE_MEAN_METHODS = ("c2_collapse", "c3")


def collapse_twice(method: str, enabled: bool) -> np.float32:
    """The ``twice`` setting of ``train_condition``: 1 for the C^3 code's double image-mean
    subtraction (``enabled`` and a method in ``DOUBLE_MEAN_METHODS``), else 0."""
    return np.float32(enabled and method in DOUBLE_MEAN_METHODS)


def init_state(gen, disc, tx, cfg: stylegan2.GANConfig, key) -> GANState:
    """Initial G and D params (from ``key``), their Adam states, and the EMA generator."""
    z, c = jnp.zeros((2, cfg.z_dim)), jnp.zeros((2, cfg.cond_dim))
    img = jnp.zeros((2, cfg.resolution, cfg.resolution, 3))
    g_key, d_key = jax.random.split(key)
    g = gen.init(g_key, z, c)["params"]
    d = disc.init(d_key, img, c)["params"]
    return GANState(jnp.zeros((), jnp.int32), g, d, tx.init(g), tx.init(d), g,
                    jnp.zeros((), jnp.float32))


def check_batch(config, rows: ImageRows) -> int:
    """This process's share of ``batch_size``, once it fits the devices, the training
    images and ``mbstd_group``."""
    g = config.generator
    if g.batch_size % g.mbstd_group and g.batch_size > g.mbstd_group:
        raise ValueError(f"generator.batch_size={g.batch_size} must be a multiple of "
                         f"generator.mbstd_group={g.mbstd_group}")
    return parallel.local_batch_size(g.batch_size, len(rows), "training images")


def regs_at(config, step: int) -> tuple:
    """(path-length penalty, R1) at ``step``: LAFITE's lazy regularization phases (never
    at weight 0, so that no program is compiled for them)."""
    g = config.generator
    return (g.pl_weight > 0 and step % g.pl_every == 0,
            g.r1_gamma > 0 and step % g.r1_every == 0)


# ---------------------------------------------------------------------------
# Evaluation: generate from the other modality's embeddings


def _batches(source, config, limit: int, field: str, pick: Optional[np.random.Generator] = None):
    """(embeddings [b, d] of ``field``, real images, captions) batches; where a row holds
    several embeddings (one per caption), its first, or with ``pick`` one drawn at random
    (LAFITE's ``get_txt_features``: one random caption per image)."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    size = config.eval.batch_size
    for start in range(0, n, size):
        rows = [source[i] for i in range(start, min(start + size, n))]
        e = np.stack([np.asarray(r[field], np.float32) for r in rows])
        index = np.zeros(len(rows), np.int64)
        if e.ndim == 3:
            if pick is not None:
                index = pick.integers(0, e.shape[1], len(rows))
            e = e[np.arange(len(rows)), index]
        if not np.isfinite(e).all():
            raise ValueError(f"{field!r} embeddings contain NaN or Inf")
        images = np.stack([np.asarray(r[config.data.image_field], np.uint8) for r in rows])
        caps = [cd.captions_of(r, config.data.caption_field) for r in rows]
        yield e, images, [c[min(k, len(c) - 1)] for c, k in zip(caps, index)]


class ImageScores:
    """Scores of generated images, accumulated batch by batch: the Fréchet distance to the
    real images (``add_real``) in the encoder's (CLIP) space, the CLIP score against the
    conditioning embeddings, and FID/IS when an Inception is given."""

    def __init__(self, encoder: Encoder, inception=None):
        self.encoder, self.inception = encoder, inception
        self.stats = {k: im.FeatureStats() for k in ("clip_fake", "clip_real", "inc_fake",
                                                     "inc_real")}
        self.clip_scores, self.logits = [], []

    def update(self, fake: np.ndarray, text: np.ndarray) -> None:
        """Adds generated images and the embeddings they were generated from."""
        f_fake = self.encode(fake)
        self.stats["clip_fake"].update(f_fake)
        self.clip_scores.append(np.sum(_unit(f_fake) * _unit(text), -1))
        if self.inception is not None:
            feats, lg = self.inception(fake)
            self.stats["inc_fake"].update(feats)
            self.logits.append(lg)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.encoder.encode_uint8(images))

    def add_real(self, real: np.ndarray) -> None:
        """Adds real images to the reference statistics."""
        self.stats["clip_real"].update(self.encode(real))
        if self.inception is not None:
            self.stats["inc_real"].update(self.inception(real)[0])

    def result(self, real: Optional["ImageScores"] = None) -> dict:
        """The scores against the real images added to ``real`` (by default to this one;
        several members' scores share one set of real statistics)."""
        stats = {**self.stats, **{k: v for k, v in (real or self).stats.items()
                                  if k.endswith("_real")}}
        metrics = {"clip_frechet_distance": im.frechet_distance_of_stats(stats["clip_fake"],
                                                                         stats["clip_real"]),
                   "clip_score": float(np.mean(np.concatenate(self.clip_scores))),
                   "num_generated": stats["clip_fake"].count}
        if self.inception is None:
            metrics["FID_skipped"] = ("no eval.inception_weights file given (the standard FID "
                                      "Inception weights, pt_inception-2015-12-05-6726825d.pth)")
        else:
            metrics["FID"] = im.frechet_distance_of_stats(stats["inc_fake"], stats["inc_real"])
            logits = np.concatenate(self.logits)
            metrics["IS"], metrics["IS_std"] = im.inception_score(logits, min(10, len(logits)))
        return metrics


def test_batches(config, limit: int = 0, field: str = "",
                 pick: Optional[np.random.Generator] = None):
    """The test split's batches (embeddings of ``field``, by default ``data.eval_field``: the
    text's; real images; captions; ``pick``: a random caption per row), with a progress
    bar."""
    source = builders.data_source(config.data.dataset_dir, config.data.test_split)
    total = len(source) if limit <= 0 else min(limit, len(source))
    return progress_bar(_batches(source, config, limit, field or config.data.eval_field, pick),
                        desc="generate", unit="batch",
                        total=-(-total // config.eval.batch_size))


# How generated images are scored: "lafite" is LAFITE's and C^3's protocol (drboog/Lafite
# metrics/metric_utils.py, reported as fid50k_full but generating 30,000): one image per row
# of the first `eval_max_examples` rows of `test_split` (their val2014) from one caption
# drawn at random per row, against real statistics of every `train_split` image; "paired":
# each row's first caption, against the same rows' real images.
FID_PROTOCOLS = ("lafite", "paired")


def protocol_note(config, generated: int, real: int) -> str:
    """results.json's description of what the FID (and CLIP FD) were computed on."""
    data = config.data
    if config.eval.fid_protocol == "lafite":
        return (f"lafite: {generated} images from the first {generated} {data.test_split!r} "
                f"rows, one random caption each, vs {real} {data.train_split!r} images")
    return (f"paired: {generated} images from the first caption of the first {generated} "
            f"{data.test_split!r} rows, vs those rows' {real} images")


def train_images(config):
    """Every image of the training split, in batches of ``eval.batch_size``."""
    source = builders.data_source(config.data.dataset_dir, config.data.train_split)
    for start in range(0, len(source), config.eval.batch_size):
        stop = min(start + config.eval.batch_size, len(source))
        yield np.stack([np.asarray(source[i][config.data.image_field], np.uint8)
                        for i in range(start, stop)])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def inception_of(path: str):
    """A jitted (uint8 images) -> (pool features, logits) of the FID Inception, or None."""
    if not path:
        return None
    fn = inception.make_feature_fn(*inception.load_fid_inception(path))
    return lambda images: tuple(np.asarray(a) for a in fn(images))
