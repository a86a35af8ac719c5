"""CLIP image and text towers in Flax, loading Hugging Face checkpoints exactly."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.models import hf_import
from c3_jax.models.layers import Encoder, causal_mask, combine_masks, padding_mask


@dataclasses.dataclass(frozen=True)
class Tower:
    """Width, depth and block hyperparameters of one transformer tower."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A CLIP of any size; defaults are ViT-B/32 (the paper's encoder)."""
    text: Tower = Tower(512, 12, 8, 2048)
    vision: Tower = Tower(768, 12, 12, 3072)
    projection_dim: int = 512
    vocab_size: int = 49408
    max_positions: int = 77
    eos_token_id: int = 49407
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    @classmethod
    def from_hf(cls, hf: dict) -> "CLIPConfig":
        """Builds the config from a Hugging Face CLIPModel config.json (defaults filled in)."""
        t, v = hf.get("text_config", {}), hf.get("vision_config", {})
        tower = lambda c, d: Tower(
            c.get("hidden_size", d.width), c.get("num_hidden_layers", d.depth),
            c.get("num_attention_heads", d.heads), c.get("intermediate_size", d.mlp_dim),
            c.get("hidden_act", d.act), c.get("layer_norm_eps", d.eps))
        return cls(text=tower(t, cls.text), vision=tower(v, cls.vision),
                   projection_dim=hf.get("projection_dim", cls.projection_dim),
                   vocab_size=t.get("vocab_size", cls.vocab_size),
                   max_positions=t.get("max_position_embeddings", cls.max_positions),
                   eos_token_id=t.get("eos_token_id", cls.eos_token_id),
                   image_size=v.get("image_size", cls.image_size),
                   patch_size=v.get("patch_size", cls.patch_size),
                   num_channels=v.get("num_channels", cls.num_channels))


def _encoder(t: Tower, dtype) -> Encoder:
    return Encoder(t.depth, t.heads, t.mlp_dim, t.act, t.eps, dtype, name="encoder")


class VisionTower(nn.Module):
    """ViT: patch embedding, class token, positions, pre-LN, blocks, post-LN on the class token."""
    config: CLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c, t = self.config, self.config.vision
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype)  # NCHW -> NHWC
        x = nn.Conv(t.width, (c.patch_size,) * 2, strides=(c.patch_size,) * 2, padding="VALID",
                    use_bias=False, dtype=self.dtype, name="patch_embedding")(x)
        x = x.reshape(x.shape[0], -1, t.width)
        init = nn.initializers.normal(t.width ** -0.5)
        cls = self.param("class_embedding", init, (t.width,))
        pos = self.param("position_embedding", init, ((c.image_size // c.patch_size) ** 2 + 1,
                                                      t.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, t.width)).astype(x.dtype), x], 1)
        x = x + pos.astype(x.dtype)
        x = nn.LayerNorm(epsilon=t.eps, dtype=self.dtype, name="pre_ln")(x)
        x, _ = _encoder(t, self.dtype)(x)
        return nn.LayerNorm(epsilon=t.eps, dtype=self.dtype, name="post_ln")(x[:, 0])


class TextTower(nn.Module):
    """Causal text transformer pooled at the end-of-text token."""
    config: CLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask=None) -> jax.Array:
        c, t = self.config, self.config.text
        length = input_ids.shape[1]
        if length > c.max_positions:
            raise ValueError(f"text length {length} exceeds max_positions={c.max_positions}")
        x = nn.Embed(c.vocab_size, t.width, dtype=self.dtype, name="token_embedding")(input_ids)
        pos = self.param("position_embedding", nn.initializers.normal(0.01),
                         (c.max_positions, t.width))
        x = x + pos[:length].astype(x.dtype)
        mask = combine_masks(causal_mask(length), padding_mask(attention_mask))
        x, _ = _encoder(t, self.dtype)(x, mask)
        x = nn.LayerNorm(epsilon=t.eps, dtype=self.dtype, name="final_ln")(x)
        # Legacy configs (eos id 2) pool at the highest token id, like Hugging Face.
        eot = (jnp.argmax(input_ids, -1) if c.eos_token_id == 2
               else jnp.argmax(input_ids == c.eos_token_id, -1))
        return x[jnp.arange(x.shape[0]), eot]


class CLIP(nn.Module):
    """Both towers and their projections; ``encode_image`` / ``encode_text`` give the
    projected, unnormalized features of ``CLIPModel.get_image_features`` / ``get_text_features``."""
    config: CLIPConfig = CLIPConfig()
    dtype: Any = jnp.float32

    def setup(self):
        self.vision = VisionTower(self.config, self.dtype)
        self.text = TextTower(self.config, self.dtype)
        dense = lambda: nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype)
        self.visual_projection, self.text_projection = dense(), dense()
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision(pixel_values))

    def encode_text(self, input_ids: jax.Array, attention_mask=None) -> jax.Array:
        return self.text_projection(self.text(input_ids, attention_mask))

    def __call__(self, pixel_values, input_ids, attention_mask=None):
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask)


def _linear(sd, key, bias=True):
    out = {"kernel": sd[key + ".weight"].T}
    if bias:
        out["bias"] = sd[key + ".bias"]
    return out


def _layer_norm(sd, key):
    return {"scale": sd[key + ".weight"], "bias": sd[key + ".bias"]}


def _clip_encoder(sd, prefix: str, depth: int) -> dict:
    layers = {}
    for i in range(depth):
        p = f"{prefix}.encoder.layers.{i}."
        layers[f"layers_{i}"] = {
            "ln1": _layer_norm(sd, p + "layer_norm1"), "ln2": _layer_norm(sd, p + "layer_norm2"),
            "attn": {n: _linear(sd, p + "self_attn." + n)
                     for n in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "fc1": _linear(sd, p + "mlp.fc1"), "fc2": _linear(sd, p + "mlp.fc2")}
    return layers


def convert_hf(sd: dict, config: CLIPConfig) -> dict:
    """Maps a Hugging Face CLIPModel state dict to this module's params."""
    v, t = "vision_model", "text_model"
    try:
        return {
            "vision": {
                "patch_embedding": {"kernel": sd[f"{v}.embeddings.patch_embedding.weight"]
                                    .transpose(2, 3, 1, 0)},
                "class_embedding": sd[f"{v}.embeddings.class_embedding"],
                "position_embedding": sd[f"{v}.embeddings.position_embedding.weight"],
                "pre_ln": _layer_norm(sd, f"{v}.pre_layrnorm"),
                "encoder": _clip_encoder(sd, v, config.vision.depth),
                "post_ln": _layer_norm(sd, f"{v}.post_layernorm")},
            "text": {
                "token_embedding": {"embedding": sd[f"{t}.embeddings.token_embedding.weight"]},
                "position_embedding": sd[f"{t}.embeddings.position_embedding.weight"],
                "encoder": _clip_encoder(sd, t, config.text.depth),
                "final_ln": _layer_norm(sd, f"{t}.final_layer_norm")},
            "visual_projection": _linear(sd, "visual_projection", bias=False),
            "text_projection": _linear(sd, "text_projection", bias=False),
            "logit_scale": sd.get("logit_scale", np.asarray(np.log(1 / 0.07), np.float32)),
        }
    except KeyError as err:
        raise ValueError(f"not a CLIPModel checkpoint: tensor {err} is missing") from None


def from_pretrained(path: str, dtype=jnp.float32):
    """Loads a Hugging Face CLIPModel directory: returns ``(module, params)``."""
    example = lambda c: (jnp.zeros((1, c.num_channels, c.image_size, c.image_size)),
                         jnp.zeros((1, 2), jnp.int32))
    return hf_import.load_pretrained(path, CLIPConfig.from_hf, lambda c: CLIP(c, dtype),
                                      convert_hf, example, "CLIP")
