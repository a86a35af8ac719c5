"""ClipCap captioner: a mapping network from an embedding to a GPT-2 prefix, then GPT-2."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from c3_jax.models.gpt2 import GPT2, GPT2Config
from c3_jax.models.layers import Encoder

MAPPERS = ("mlp", "transformer", "linear")


@dataclasses.dataclass(frozen=True)
class MapperConfig:
    """Mapping network: ``mlp`` (ClipCap's MLP, P=10), ``transformer`` (learned prefix
    constants, P=40, GPT-2 usually frozen) or ``linear`` (one token, the ImageBind runs)."""
    kind: str = "mlp"
    prefix_length: int = 10
    clip_length: int = 10  # transformer: tokens the embedding is projected to
    depth: int = 8  # transformer layers
    heads: int = 8

    def __post_init__(self):
        if self.kind not in MAPPERS:
            raise ValueError(f"mapper kind {self.kind!r}; expected one of {MAPPERS}")
        if self.prefix_length < 1:
            raise ValueError(f"prefix_length={self.prefix_length} must be >= 1")


class MLPMapper(nn.Module):
    """embedding -> (width*P)/2 -> tanh -> width*P, reshaped to [B, P, width]."""
    prefix_length: int
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e: jax.Array) -> jax.Array:
        out = self.width * self.prefix_length
        h = jnp.tanh(nn.Dense(out // 2, dtype=self.dtype, name="fc1")(e))
        return nn.Dense(out, dtype=self.dtype, name="fc2")(h).reshape(
            e.shape[0], self.prefix_length, self.width)


class LinearMapper(nn.Module):
    """embedding -> width*P by one linear layer, reshaped to [B, P, width]."""
    prefix_length: int
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e: jax.Array) -> jax.Array:
        return nn.Dense(self.width * self.prefix_length, dtype=self.dtype, name="fc")(e).reshape(
            e.shape[0], self.prefix_length, self.width)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the embedding projected to ``clip_length`` tokens,
    followed by ``prefix_length`` learned constants, through a transformer; the outputs
    at the constants' positions are the prefix."""
    config: MapperConfig
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Dense(self.width * c.clip_length, dtype=self.dtype, name="fc")(e).reshape(
            e.shape[0], c.clip_length, self.width)
        const = self.param("prefix_const", nn.initializers.normal(1.0),
                           (c.prefix_length, self.width))
        const = jnp.broadcast_to(const.astype(x.dtype), (e.shape[0],) + const.shape)
        x, _ = Encoder(c.depth, c.heads, 2 * self.width, "relu", 1e-5, self.dtype,
                       name="transformer")(jnp.concatenate([x, const], 1))
        return x[:, c.clip_length:]


class ClipCap(nn.Module):
    """Prefix captioner: ``mapper(embedding)`` then GPT-2 over [prefix, caption tokens].

    ``__call__(embedding [B, d], input_ids [B, L], attention_mask [B, L])`` returns
    logits [B, P + L, V]; ``prefix(embedding)`` returns the [B, P, width] prefix alone
    (what decoding feeds GPT-2). Params: {'mapper': ..., 'gpt': GPT-2 params}.
    """
    mapper: MapperConfig = MapperConfig()
    gpt: GPT2Config = GPT2Config()
    dtype: Any = jnp.float32

    def setup(self):
        width, m = self.gpt.width, self.mapper
        if m.kind == "mlp":
            self.map = MLPMapper(m.prefix_length, width, self.dtype, name="mapper")
        elif m.kind == "linear":
            self.map = LinearMapper(m.prefix_length, width, self.dtype, name="mapper")
        else:
            self.map = TransformerMapper(m, width, self.dtype, name="mapper")
        self.decoder = GPT2(self.gpt, self.dtype, name="gpt")

    def prefix(self, embedding: jax.Array) -> jax.Array:
        return self.map(embedding)

    def __call__(self, embedding: jax.Array, input_ids: jax.Array,
                 attention_mask: Optional[jax.Array] = None, head_from: int = 0,
                 head: bool = True) -> jax.Array:
        prefix = self.map(embedding)
        if attention_mask is not None:
            ones = jnp.ones(prefix.shape[:2], attention_mask.dtype)
            attention_mask = jnp.concatenate([ones, attention_mask], 1)
        return self.decoder(input_ids, attention_mask=attention_mask, prefix=prefix,
                            head_from=head_from, head=head)

    def caption_nll(self, embedding: jax.Array, input_ids: jax.Array, attention_mask: jax.Array,
                    chunk: int = 0) -> tuple[jax.Array, jax.Array]:
        """``caption_loss`` without the prefix positions' logits: the LM head runs over the
        caption positions only, all at once (``chunk`` 0) or ``chunk`` positions at a time,
        recomputed in the backward pass, so the [B, L, V] logits never exist whole (less
        memory, a third more LM-head compute). Returns (mean NLL, number of tokens)."""
        hidden = self(embedding, input_ids, attention_mask,
                      head_from=self.mapper.prefix_length - 1, head=False)[:, :-1]
        table = self.decoder.variables["params"]["wte"]["embedding"]
        return chunked_token_nll(hidden, table, input_ids, attention_mask, chunk)

    def decode_step(self, **kwargs):
        """GPT-2 alone (ids or embeddings, cache, index): what decoding calls after the prefix."""
        return self.decoder(**kwargs)


def chunked_token_nll(hidden: jax.Array, table: jax.Array, targets: jax.Array, mask: jax.Array,
                      chunk: int) -> tuple[jax.Array, jax.Array]:
    """Mean NLL of ``targets`` [B, L] under logits ``hidden @ table.T`` ([B, L, W] x [V, W]),
    over positions where ``mask`` is 1, computed ``chunk`` positions at a time (all at once
    without recomputation when ``chunk`` is 0)."""
    def nll_sum(h, t, m):
        logits = (h @ table.astype(h.dtype).T).astype(jnp.float32)
        picked = jnp.take_along_axis(logits, t[..., None], -1)[..., 0]
        return ((jax.nn.logsumexp(logits, -1) - picked) * m).sum()

    mask = mask.astype(jnp.float32)
    count = mask.sum()
    batch, length, width = hidden.shape
    if chunk <= 0:
        return nll_sum(hidden, targets, mask) / jnp.maximum(count, 1.0), count
    chunk = min(chunk, length)
    pad = (-length) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, mask = (jnp.pad(a, ((0, 0), (0, pad))) for a in (targets, mask))
    n = (length + pad) // chunk
    split = lambda a: jnp.swapaxes(a.reshape((batch, n, chunk) + a.shape[2:]), 0, 1)
    total = jax.lax.map(lambda a: jax.checkpoint(nll_sum)(*a),
                        (split(hidden), split(targets), split(mask)))
    return total.sum() / jnp.maximum(count, 1.0), count


def caption_loss(logits: jax.Array, input_ids: jax.Array, mask: jax.Array,
                 prefix_length: int) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy over the caption's unmasked tokens (EOS included):
    position P-1+t predicts token t. Returns (loss, number of tokens)."""
    logits = logits[:, prefix_length - 1:-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, input_ids[..., None], -1)[..., 0]
    mask = mask.astype(jnp.float32)
    count = mask.sum()
    return (nll * mask).sum() / jnp.maximum(count, 1.0), count
