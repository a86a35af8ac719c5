"""GPT-2 language model in Flax (input ids or prefix embeddings), loading HF checkpoints."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from c3_jax.models import hf_import
from c3_jax.models.layers import Encoder, combine_masks, padding_mask


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 of any size; defaults are GPT-2 small (the paper's decoder)."""
    vocab_size: int = 50257
    max_positions: int = 1024
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: Optional[int] = None  # 4 * width when None
    act: str = "gelu_new"
    eps: float = 1e-5

    @classmethod
    def from_hf(cls, hf: dict) -> "GPT2Config":
        width = hf.get("n_embd", cls.width)
        return cls(vocab_size=hf.get("vocab_size", cls.vocab_size),
                   max_positions=hf.get("n_positions", cls.max_positions), width=width,
                   depth=hf.get("n_layer", cls.depth), heads=hf.get("n_head", cls.heads),
                   mlp_dim=hf.get("n_inner") or 4 * width,
                   act=hf.get("activation_function", cls.act),
                   eps=hf.get("layer_norm_epsilon", cls.eps))


class GPT2(nn.Module):
    """GPT-2 LM head model with tied input/output embeddings; returns logits [B, L, V].

    ``prefix`` [B, P, width] embeddings (e.g. a ClipCap mapper's output) are placed
    before the tokens; ``attention_mask`` then covers prefix and tokens. For incremental
    decoding pass ``cache`` (from ``init_cache``) and the position ``index`` of the first
    new token; ``attention_mask`` then covers all cache slots [B, S], and the call
    returns ``(logits, cache)``. ``head_from`` computes the output only for positions
    ``head_from`` on (e.g. the last of a prompt, or a caption after its prefix);
    ``head=False`` returns the final hidden states there instead of logits (a loss can
    then apply the tied embedding in chunks).
    """
    config: GPT2Config = GPT2Config()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Optional[jax.Array] = None,
                 inputs_embeds: Optional[jax.Array] = None,
                 attention_mask: Optional[jax.Array] = None, cache=None, index=0,
                 prefix: Optional[jax.Array] = None, head_from: int = 0, head: bool = True):
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        wte = nn.Embed(c.vocab_size, c.width, dtype=self.dtype, name="wte",
                       embedding_init=nn.initializers.normal(0.02))
        x = wte(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        if prefix is not None:
            x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
        length = x.shape[1]
        slots = length if cache is None else cache[0][0].shape[1]
        if slots > c.max_positions:
            raise ValueError(f"sequence length {slots} exceeds max_positions={c.max_positions}")
        wpe = self.param("wpe", nn.initializers.normal(0.01), (c.max_positions, c.width))
        positions = index + jnp.arange(length)
        x = x + jnp.take(wpe, positions, axis=0).astype(x.dtype)
        causal = (jnp.arange(slots)[None, :] <= positions[:, None])[None, None]
        mask = combine_masks(causal, padding_mask(attention_mask))
        x, cache = Encoder(c.depth, c.heads, c.mlp_dim or 4 * c.width, c.act, c.eps, self.dtype,
                           name="encoder")(x, mask, cache, index)
        x = nn.LayerNorm(epsilon=c.eps, dtype=self.dtype, name="ln_f")(x[:, head_from:])
        logits = wte.attend(x).astype(jnp.float32) if head else x
        return logits if cache is None else (logits, cache)


def init_cache(config: GPT2Config, batch: int, slots: int, dtype=jnp.float32):
    """Empty key/value cache for ``slots`` positions: one (k, v) pair per layer."""
    shape = (batch, slots, config.heads, config.width // config.heads)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.depth))


def convert_hf(sd: dict, config: GPT2Config) -> dict:
    """Maps a Hugging Face GPT2LMHeadModel / GPT2Model state dict to this module's params."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    w = config.width
    ln = lambda k: {"scale": sd[k + ".weight"], "bias": sd[k + ".bias"]}
    conv1d = lambda k: {"kernel": sd[k + ".weight"], "bias": sd[k + ".bias"]}  # [in, out] already
    try:
        layers = {}
        for i in range(config.depth):
            p = f"h.{i}."
            qkv_w, qkv_b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
            attn = {n: {"kernel": qkv_w[:, j * w:(j + 1) * w], "bias": qkv_b[j * w:(j + 1) * w]}
                    for j, n in enumerate(("q_proj", "k_proj", "v_proj"))}
            attn["out_proj"] = conv1d(p + "attn.c_proj")
            layers[f"layers_{i}"] = {"ln1": ln(p + "ln_1"), "ln2": ln(p + "ln_2"), "attn": attn,
                                     "fc1": conv1d(p + "mlp.c_fc"), "fc2": conv1d(p + "mlp.c_proj")}
        return {"wte": {"embedding": sd["wte.weight"]}, "wpe": sd["wpe.weight"],
                "encoder": layers, "ln_f": ln("ln_f")}
    except KeyError as err:
        raise ValueError(f"not a GPT-2 checkpoint: tensor {err} is missing") from None


def from_pretrained(path: str, dtype=jnp.float32):
    """Loads a Hugging Face GPT-2 directory: returns ``(module, params)``."""
    return hf_import.load_pretrained(path, GPT2Config.from_hf, lambda c: GPT2(c, dtype),
                                      convert_hf, lambda c: (jnp.zeros((1, 2), jnp.int32),),
                                      "GPT-2")


def write_config_dir(path: str, tokenizer, width: int, depth: int, heads: int,
                     max_positions: int, vocab_size: int = 0) -> None:
    """A Hugging Face GPT-2 directory without weights (config.json and ``tokenizer``), for
    a GPT-2 trained from scratch; ``vocab_size`` 0: the tokenizer's."""
    os.makedirs(path, exist_ok=True)
    tokenizer.save_pretrained(path)
    hf = {"model_type": "gpt2", "vocab_size": vocab_size or len(tokenizer),
          "n_positions": max_positions, "n_embd": width, "n_layer": depth, "n_head": heads,
          "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
          "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
