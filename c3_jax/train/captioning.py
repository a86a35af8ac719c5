"""The ClipCap captioner's building blocks: model, optimizer, schedule, the update of one
train step, decoding and its stop tokens. A ClipCap prefix captioner is trained on one
modality's embeddings (text, for uni-modal training) and evaluated on another's (images,
audio, video).

Training, validation, the best params, decoding and evaluation have one path,
``caption_sweep``: a single run is a sweep of one member.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from c3_jax.models import clipcap, decoding, gpt2, hf_import
from c3_jax.train import state as st

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------
# Model and optimizer


def build_module(config):
    """The ClipCap module of ``config.captioner`` and GPT-2's pretrained params (None when
    trained from scratch)."""
    cap = config.captioner
    if cap.dtype not in DTYPES:
        raise ValueError(f"captioner.dtype={cap.dtype!r}; expected one of {sorted(DTYPES)}")
    dtype = DTYPES[cap.dtype]
    if cap.gpt2_from_scratch:
        hf = hf_import.read_config(cap.gpt2)
        gpt_config, gpt_params = gpt2.GPT2Config.from_hf(hf), None
    else:
        gpt_module, gpt_params = gpt2.from_pretrained(cap.gpt2, dtype)
        gpt_config = gpt_module.config
    mapper = clipcap.MapperConfig(cap.mapper, cap.prefix_length, cap.clip_length,
                                  cap.mapper_depth)
    return clipcap.ClipCap(mapper, gpt_config, dtype), gpt_params


def init_params(model: clipcap.ClipCap, key, dim: int):
    """Randomly initialized params of the whole captioner (mapper and GPT-2)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return model.init(key, jnp.zeros((1, dim)), ids, jnp.ones_like(ids))["params"]


def warmup_steps_of(config) -> int:
    """The run's warmup updates: ``warmup_steps``, times ``train_fraction`` when
    ``warmup_scales_with_fraction`` (the official stage-2 ``run.py``: int(5000 * fraction))."""
    if config.captioner.warmup_scales_with_fraction:
        return int(config.captioner.warmup_steps * config.data.train_fraction)
    return config.captioner.warmup_steps


def schedule_of(config, total_updates: int) -> optax.Schedule:
    """The learning rate per update: ClipCap's linear warmup then linear decay to 0
    ('warmup_linear_decay'), or ``lr`` throughout ('constant': no scheduler, as the
    official ImageBind config)."""
    if config.captioner.lr_schedule == "constant":
        return optax.constant_schedule(config.captioner.lr)
    return st.warmup_linear_decay(config.captioner.lr, warmup_steps_of(config), total_updates)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The captioner's optimizer as a value: AdamW on ``schedule_of``, GPT-2's params left
    alone when ``freeze_gpt``, ``grad_accum`` micro-steps per update. It has optax's
    ``init`` and ``update``; equal settings make equal (and equally hashed) optimizers, so
    the compiled steps that take one as a static argument are traced once per setting."""
    lr: float
    schedule: str  # 'warmup_linear_decay' or 'constant'
    warmup: int
    updates: int
    weight_decay: float
    freeze_gpt: bool
    grad_accum: int

    def transform(self, params) -> optax.GradientTransformation:
        rate = (optax.constant_schedule(self.lr) if self.schedule == "constant" else
                st.warmup_linear_decay(self.lr, self.warmup, self.updates))
        trainable = {"mapper": jax.tree.map(lambda _: True, params["mapper"]),
                     "gpt": jax.tree.map(lambda _: not self.freeze_gpt, params["gpt"])}
        return st.adamw(rate, self.weight_decay, trainable if self.freeze_gpt else None,
                        self.grad_accum)

    def init(self, params):
        return self.transform(params).init(params)

    def update(self, grads, opt_state, params):
        return self.transform(params).update(grads, opt_state, params)


def make_optimizer(config, total_updates: int) -> Optimizer:
    """The run's ``Optimizer`` over ``total_updates`` updates."""
    cap = config.captioner
    return Optimizer(float(cap.lr), cap.lr_schedule, warmup_steps_of(config), total_updates,
                     float(cap.weight_decay), bool(cap.freeze_gpt), cap.grad_accum)


# ---------------------------------------------------------------------------
# Training


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


def total_steps(config, num_pairs: int) -> int:
    """Micro-steps of the run: ``max_steps``, or ``num_epochs`` over the pairs."""
    cap = config.captioner
    return cap.max_steps if cap.max_steps > 0 else cap.num_epochs * (num_pairs // cap.batch_size)


# ---------------------------------------------------------------------------
# Decoding and evaluation


def stop_ids(tokenizer, at_period: bool) -> tuple:
    """The token ids decoding stops at: EOS, and '.' when ``at_period`` (one token)."""
    stops = [tokenizer.eos_token_id]
    if at_period:
        period = tokenizer(".", add_special_tokens=False)["input_ids"]
        if len(period) == 1:
            stops.append(period[0])
    return tuple(sorted(set(stops)))


def decode_text(tokenizer, tokens: np.ndarray, stops: tuple) -> str:
    """A caption's text: its tokens up to the first stop ('.' kept, EOS dropped)."""
    tokens = list(tokens)
    for i, t in enumerate(tokens):
        if t in stops:
            tokens = tokens[:i + (t != tokenizer.eos_token_id)]  # keep '.', drop EOS
            break
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


@dataclasses.dataclass(frozen=True)
class Decoder:
    """(GPT-2 params, prefix [B, P, W]) -> tokens [B, T]: greedy or beam search, as a value
    (a static argument of the compiled decoding, like ``Optimizer``)."""
    module: gpt2.GPT2
    kind: str  # 'greedy' or 'beam'
    beam_size: int
    max_new_tokens: int
    stop_ids: tuple
    pad_id: int

    def __call__(self, params, prefix: jax.Array) -> jax.Array:
        if self.kind == "greedy":
            return decoding.greedy(self.module, params, prompt_embeds=prefix,
                                   max_new_tokens=self.max_new_tokens, stop_ids=self.stop_ids,
                                   pad_id=self.pad_id)
        return decoding.beam_search(self.module, params, prompt_embeds=prefix,
                                    beam_size=self.beam_size, max_new_tokens=self.max_new_tokens,
                                    stop_ids=self.stop_ids, pad_id=self.pad_id)[0]


def make_decoder(config, module: gpt2.GPT2, stops: tuple, pad_id: int) -> Decoder:
    """The config's ``Decoder`` (``decode``: 'greedy' or 'beam')."""
    options = config.eval
    if options.decode not in ("greedy", "beam"):
        raise ValueError(f"eval.decode={options.decode!r}; expected 'greedy' or 'beam'")
    return Decoder(module, options.decode, options.beam_size, options.max_decode_tokens,
                   tuple(stops), pad_id)


def check_width(embeddings: np.ndarray, dim: int, field: str) -> None:
    """Raises when evaluation embeddings are not as wide as the training ones."""
    if embeddings.shape[1] != dim:
        raise ValueError(f"{field!r} embeddings are {embeddings.shape[1]}-d but the captioner "
                         f"was built for {dim}-d training embeddings")
