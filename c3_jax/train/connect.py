"""Connect: contrastive pretraining of a small CLIP (image and text towers) on image-caption
pairs, then frozen-encoder embeddings of every split."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from c3_jax.data import pipeline
from c3_jax.models import clip
from c3_jax.data import captions as cd
from c3_jax import parallel
from c3_jax.train import checkpoints, loop
from c3_jax.train import state as st
from c3_jax.workdir import Workdir

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


@dataclasses.dataclass(frozen=True)
class ConnectConfig:
    """Contrastive training of a CLIP on (image, caption) pairs."""
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    # 0: CLIP's learned temperature (from 0.07, logit scale capped at 100); > 0: held fixed.
    temperature: float = 0.0
    probe_at: Tuple[int, ...] = ()  # steps (0 = at initialization) at which ``probe`` runs

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"connect {name}={getattr(self, name)} must be at least 1")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0 and (value > 0 or name != "lr")):
                raise ValueError(f"connect {name}={value} must be a finite number "
                                 + ("> 0" if name == "lr" else ">= 0"))
        if self.warmup_steps < 0:
            raise ValueError(f"connect warmup_steps={self.warmup_steps} must be >= 0")
        if not (self.temperature == 0.0 or 0.0 < self.temperature <= 10.0):
            raise ValueError(f"connect temperature={self.temperature} must be 0 (learned) or "
                             "in (0, 10] (fixed)")
        bad = [s for s in self.probe_at if not 0 <= s <= self.steps]
        if bad:
            raise ValueError(f"connect probe_at steps {bad} lie outside 0..{self.steps}")


def pixels(images: jax.Array) -> jax.Array:
    """uint8 images [B, H, W, 3] -> normalized float NCHW, the towers' input."""
    x = images.astype(jnp.float32) / 255.0
    return jnp.transpose((x - PIXEL_MEAN) / PIXEL_STD, (0, 3, 1, 2))


def clip_loss(image_features: jax.Array, text_features: jax.Array,
              logit_scale: jax.Array) -> jax.Array:
    """CLIP's symmetric InfoNCE over a batch of normalized features (scale capped at 100)."""
    x = image_features / jnp.linalg.norm(image_features, axis=-1, keepdims=True)
    y = text_features / jnp.linalg.norm(text_features, axis=-1, keepdims=True)
    logits = jnp.exp(jnp.minimum(logit_scale, jnp.log(100.0))) * x @ y.T
    labels = jnp.arange(x.shape[0])
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    return 0.5 * (ce(logits) + ce(logits.T))


def logit_scale(params, temperature: float = 0.0) -> jax.Array:
    """The logit scale the loss uses: the learned one (capped at 100), or 1/temperature."""
    if temperature:
        return jnp.asarray(np.log(1.0 / temperature), jnp.float32)
    return jnp.minimum(params["logit_scale"], jnp.log(100.0))


def make_step(model: clip.CLIP, tx, mesh, shardings, temperature: float = 0.0):
    """One sharded contrastive step on {'image', 'ids', 'mask'}."""
    def step(state: st.TrainState, batch: dict):
        def loss_fn(params):
            img, txt = model.apply({"params": params}, pixels(batch["image"]), batch["ids"],
                                   batch["mask"])
            return clip_loss(img, txt, logit_scale(params, temperature))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss,
                   "temperature": 1.0 / jnp.exp(logit_scale(params, temperature))}
        return st.guard_finite(st.TrainState(state.step + 1, params, opt_state), state,
                               metrics, skip=False)

    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, repl), donate_argnums=0)


Probe = Callable[[dict], dict]


def train(model: clip.CLIP, pairs: cd.CaptionPairs, config: ConnectConfig, wd: Workdir,
          directory: str, probe: Optional[Probe] = None):
    """Trains (or resumes, or reloads when finished) the CLIP on tokenized (image, caption)
    ``pairs`` with checkpoints in ``directory``; returns params. ``probe(params)`` is
    logged (keys prefixed ``probe_``) at the steps of ``config.probe_at``."""
    mesh = parallel.make_mesh(1)
    cfg = model.config
    example = (jnp.zeros((1, 3, cfg.image_size, cfg.image_size)), jnp.zeros((1, 2), jnp.int32))
    params = jax.jit(model.init)(jax.random.key(config.seed), *example)["params"]
    tx = st.adamw(st.warmup_linear_decay(config.lr, config.warmup_steps, config.steps),
                  config.weight_decay)
    abstract = jax.eval_shape(lambda p: st.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                              params)
    shardings = parallel.state_shardings(mesh, abstract)
    data = iter(pipeline.make_loader(pairs, config.batch_size // jax.process_count(),
                                     config.seed))
    ckpts = checkpoints.Checkpoints(directory)
    state, start = ckpts.resume_or_init(abstract, shardings, data, lambda: jax.device_put(
        st.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), shardings))
    step_fn = make_step(model, tx, mesh, shardings, config.temperature)

    def maybe_probe(done: int, state) -> None:
        if probe is not None and done in config.probe_at:
            wd.log_metrics(done, {f"probe_{k}": v for k, v in probe(state.params).items()})

    if start == 0:
        maybe_probe(0, state)
    schedule = st.warmup_linear_decay(config.lr, config.warmup_steps, config.steps)
    state, _, _ = loop.fit(state, start, lambda s, batch, i: step_fn(s, batch), data,
                           parallel.batch_sharding(mesh), ckpts, wd,
                           loop.LoopConfig(config.steps, config.log_every,
                                           config.checkpoint_every, desc="connect"),
                           learning_rate=schedule, after_step=maybe_probe)
    return state.params


@dataclasses.dataclass(frozen=True)
class Features:
    """A CLIP's features (``params``, arrays): of uint8 images [B, H, W, 3] (``tower``
    'image') or of token ids and mask ('text'). A value: equal ones share one traced
    program (``parallel.rows_sharded``)."""
    model: clip.CLIP
    tower: str

    def __call__(self, params, arrays) -> jax.Array:
        if self.tower == "image":
            return self.model.apply({"params": params}, pixels(arrays[0]),
                                    method="encode_image")
        return self.model.apply({"params": params}, arrays[0], arrays[1], method="encode_text")


def encode(model: clip.CLIP, params, images: Optional[np.ndarray] = None,
           ids: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
           batch_size: int = 1024) -> np.ndarray:
    """Frozen features of uint8 ``images`` or of token ``ids``/``mask``, data-parallel."""
    tower = "image" if images is not None else "text"
    arrays = (images,) if images is not None else (ids, mask)
    batches = (tuple(a[i:i + batch_size] for a in arrays)
               for i in range(0, len(arrays[0]), batch_size))
    return parallel.data_parallel(Features(model, tower), params, batches, f"{tower} features")


def image_pairs(source) -> cd.CaptionPairs:
    """(image, caption) pairs of a world split: each image with each of its captions."""
    return cd.CaptionPairs(source, "image", output_key="image")
