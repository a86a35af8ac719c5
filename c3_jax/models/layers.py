"""Transformer layers shared by the CLIP towers and GPT-2 (pre-LN blocks)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str):
    """The activation function of a Hugging Face ``hidden_act``/``activation_function`` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def causal_mask(length: int) -> jax.Array:
    """[1, 1, L, L] boolean mask, True where query i may attend to key j <= i."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def padding_mask(attention_mask: Optional[jax.Array]) -> Optional[jax.Array]:
    """[B, 1, 1, L] boolean key mask from a {0, 1} attention mask [B, L]."""
    return None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]


def combine_masks(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (biases on).

    With ``cache=(k, v)`` of shape [B, S, heads, head_dim], the new keys/values are
    written at position ``index`` and attention runs over all S cached slots (the
    caller's mask hides the unwritten ones); returns ``(out, new_cache)``.
    """
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, cache=None, index=None):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads
        dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
        q, k, v = (dense(n)(x).reshape(*x.shape[:-1], self.num_heads, head_dim)
                   for n in ("q_proj", "k_proj", "v_proj"))
        if cache is not None:
            at = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), at)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), at)
            cache = (k, v)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(self.dtype)).reshape(x.shape)
        return dense("out_proj")(out), cache


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)); returns (x, cache)."""
    num_heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, cache=None, index=None):
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
        h, cache = Attention(self.num_heads, self.dtype, name="attn")(ln("ln1")(x), mask, cache,
                                                                        index)
        x = x + h
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(ln("ln2")(x))
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(activation(self.act)(y))
        return x + y, cache


class Encoder(nn.Module):
    """A stack of ``depth`` Blocks named layers_0 ... layers_{depth-1}; returns (x, caches)."""
    depth: int
    num_heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, caches=None, index=None):
        new_caches = []
        for i in range(self.depth):
            x, c = Block(self.num_heads, self.mlp_dim, self.act, self.eps, self.dtype,
                         name=f"layers_{i}")(x, mask, None if caches is None else caches[i], index)
            new_caches.append(c)
        return x, (None if caches is None else tuple(new_caches))
