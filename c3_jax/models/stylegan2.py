"""StyleGAN2 (Karras et al., 2020) generator and discriminator with LAFITE's conditioning
(Zhou et al., 2022): the condition passes two FC layers and joins w in every style affine;
the discriminator projects its features onto the condition.

Images are NHWC in [-1, 1]. Every weight uses the equalized learning rate of StyleGAN2 (a
unit-normal parameter scaled at run time by ``lr_mul / sqrt(fan_in)``). Resampling uses the
[1, 3, 3, 1] low-pass filter.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SQRT2 = float(np.sqrt(2.0))
FIR = np.array([1.0, 3.0, 3.0, 1.0])
# The generator's output: "skip" sums every resolution's RGB (upsampled), the default of
# StyleGAN2 and LAFITE; "orig" (StyleGAN2's name for the architecture without skips) takes
# RGB from the last resolution only, so that the image cannot be an upsampled low-resolution
# one.
ARCHITECTURES = ("skip", "orig")


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """Sizes of the generator and discriminator (channels per resolution:
    ``min(channel_base // res, channel_max)``)."""
    resolution: int = 32
    cond_dim: int = 512
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    cond_hidden: int = 512
    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group: int = 4
    architecture: str = "skip"  # the generator's: "skip" (StyleGAN2's) or "orig"

    def __post_init__(self):
        log2 = np.log2(self.resolution)
        if self.resolution < 8 or log2 != int(log2):
            raise ValueError(f"resolution={self.resolution} must be a power of 2, >= 8")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: use one of {ARCHITECTURES}")

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @property
    def resolutions(self) -> list:
        """8, 16, ..., resolution: the resolutions after the 4x4 block."""
        return [2 ** i for i in range(3, int(np.log2(self.resolution)) + 1)]


# ---------------------------------------------------------------------------
# Shared ops


def lrelu(x: jax.Array) -> jax.Array:
    """Leaky ReLU (0.2) with StyleGAN2's gain sqrt(2)."""
    return jax.nn.leaky_relu(x, 0.2) * SQRT2


def _fir1d(x: jax.Array, axis: int, pad: tuple, stride: int = 1) -> jax.Array:
    """The [1,3,3,1]/8 filter along ``axis`` (spatial) after zero padding ``pad``."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    xp = jnp.pad(x, widths)
    out = (xp.shape[axis] - len(FIR)) // stride + 1
    taps = [jax.lax.slice_in_dim(xp, k, k + (out - 1) * stride + 1, stride, axis)
            for k in range(len(FIR))]
    return sum(float(f) / FIR.sum() * t for f, t in zip(FIR, taps))


def _up1d(x: jax.Array, axis: int) -> jax.Array:
    """Zero insertion then the filter with gain 2 along ``axis``, as two interleaved phases."""
    n = x.shape[axis]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (1, 1)
    xp = jnp.pad(x, widths)
    prev, cur, nxt = (jax.lax.slice_in_dim(xp, k, k + n, axis=axis) for k in range(3))
    even, odd = 0.25 * prev + 0.75 * cur, 0.75 * cur + 0.25 * nxt
    y = jnp.stack([even, odd], axis=axis + 1)
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample2d(x: jax.Array) -> jax.Array:
    """2x upsampling of NHWC: zero insertion then the [1,3,3,1] low-pass filter (gain 4)."""
    return _up1d(_up1d(x, 1), 2)


def blur(x: jax.Array, pad: int) -> jax.Array:
    """The [1,3,3,1] low-pass filter with ``pad`` zeros on every side."""
    return _fir1d(_fir1d(x, 1, (pad, pad)), 2, (pad, pad))


def downsample2d(x: jax.Array) -> jax.Array:
    """2x downsampling: low-pass filter then every other pixel."""
    return _fir1d(_fir1d(x, 1, (1, 1), 2), 2, (1, 1), 2)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding="SAME") -> jax.Array:
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class Dense(nn.Module):
    """Equalized-learning-rate fully connected layer."""
    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    act: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("kernel", nn.initializers.normal(1.0 / self.lr_mul),
                       (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.constant(self.bias_init / self.lr_mul),
                       (self.features,))
        y = x @ (w * (self.lr_mul / np.sqrt(x.shape[-1]))) + b * self.lr_mul
        return lrelu(y) if self.act else y


class Conv(nn.Module):
    """Equalized-learning-rate convolution; ``down`` filters then strides by 2."""
    features: int
    kernel: int = 3
    bias: bool = True
    act: bool = True
    down: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel
        w = self.param("kernel", nn.initializers.normal(1.0), (k, k, x.shape[-1], self.features))
        w = w / np.sqrt(k * k * x.shape[-1])
        if self.down and k == 1:
            y = conv2d(downsample2d(x), w)
        elif self.down:  # blur so that a valid stride-2 conv halves the size
            y = conv2d(blur(x, (k + 1) // 2), w, stride=2, padding="VALID")
        else:
            y = conv2d(x, w)
        if self.bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return lrelu(y) if self.act else y


# ---------------------------------------------------------------------------
# Generator


def modulated_conv(x: jax.Array, weight: jax.Array, style: jax.Array,
                   demodulate: bool = True) -> jax.Array:
    """Conv with weights scaled per example by ``style`` [B, in] (and demodulated per
    output channel), computed as scale-activations / shared conv / scale-outputs."""
    y = conv2d(x * style[:, None, None, :], weight)
    if demodulate:
        sq = jnp.einsum("hwio,bi->bo", jnp.square(weight), jnp.square(style))
        y = y * jax.lax.rsqrt(sq + 1e-8)[:, None, None, :]
    return y


class Style(nn.Module):
    """LAFITE's style affine: affine(cat[fc(fc(cond)), w]), bias initialised to 1."""
    features: int
    cond_hidden: int

    @nn.compact
    def __call__(self, w: jax.Array, cond: jax.Array) -> jax.Array:
        h = Dense(self.cond_hidden, act=True, name="cond_fc1")(cond)
        h = Dense(self.cond_hidden, act=True, name="cond_fc2")(h)
        return Dense(self.features, bias_init=1.0, name="affine")(jnp.concatenate([h, w], -1))


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally after 2x upsampling) + noise + bias + lrelu."""
    features: int
    cond_hidden: int
    up: bool = False

    @nn.compact
    def __call__(self, x, w, cond, noise: Optional[jax.Array]):
        style = Style(x.shape[-1], self.cond_hidden, name="style")(w, cond)
        weight = self.param("kernel", nn.initializers.normal(1.0), (3, 3, x.shape[-1],
                                                                    self.features))
        if self.up:
            x = upsample2d(x)
        y = modulated_conv(x, weight / np.sqrt(9 * weight.shape[2]), style)
        strength = self.param("noise_strength", nn.initializers.zeros, ())
        if noise is not None:
            y = y + strength * noise[: y.shape[0], : y.shape[1], : y.shape[2]]
        return lrelu(y + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, not demodulated."""
    cond_hidden: int

    @nn.compact
    def __call__(self, x, w, cond):
        style = Style(x.shape[-1], self.cond_hidden, name="style")(w, cond)
        weight = self.param("kernel", nn.initializers.normal(1.0), (1, 1, x.shape[-1], 3))
        y = modulated_conv(x, weight / np.sqrt(x.shape[-1]), style, demodulate=False)
        return y + self.param("bias", nn.initializers.zeros, (3,))


class Mapping(nn.Module):
    """z -> w: normalized z through ``mapping_layers`` FC layers at lr multiplier 0.01."""
    config: GANConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = normalize_2nd_moment(z)
        for i in range(self.config.mapping_layers):
            x = Dense(self.config.w_dim, lr_mul=self.config.mapping_lr_mul, act=True,
                      name=f"fc{i}")(x)
        return x


def _noise(rng: Optional[jax.Array], index: int, batch: int, res: int):
    if rng is None:
        return None
    return jax.random.normal(jax.random.fold_in(rng, index), (batch, res, res, 1))


class Generator(nn.Module):
    """(z [B, z_dim], cond [B, cond_dim]) -> images [B, R, R, 3]; per-pixel noise from
    ``noise_rng`` (none when it is None); RGB as ``config.architecture`` says."""
    config: GANConfig

    @nn.compact
    def __call__(self, z: jax.Array, cond: jax.Array, noise_rng: Optional[jax.Array] = None):
        cfg, b = self.config, z.shape[0]
        w = Mapping(cfg, name="mapping")(z)
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, cfg.channels(4)))
        x = jnp.broadcast_to(const, (b,) + const.shape)
        x = SynthesisLayer(cfg.channels(4), cfg.cond_hidden, name="b4_conv")(
            x, w, cond, _noise(noise_rng, 0, b, 4))
        skip = cfg.architecture == "skip"
        img = ToRGB(cfg.cond_hidden, name="b4_torgb")(x, w, cond) if skip else None
        for i, res in enumerate(cfg.resolutions):
            ch = cfg.channels(res)
            x = SynthesisLayer(ch, cfg.cond_hidden, up=True, name=f"b{res}_conv0")(
                x, w, cond, _noise(noise_rng, 2 * i + 1, b, res))
            x = SynthesisLayer(ch, cfg.cond_hidden, name=f"b{res}_conv1")(
                x, w, cond, _noise(noise_rng, 2 * i + 2, b, res))
            if skip or res == cfg.resolution:
                rgb = ToRGB(cfg.cond_hidden, name=f"b{res}_torgb")(x, w, cond)
                img = rgb if img is None else upsample2d(img) + rgb
        return img


# ---------------------------------------------------------------------------
# Discriminator


def minibatch_std(x: jax.Array, group: int) -> jax.Array:
    """Appends the mean std over groups of ``group`` examples as one more channel."""
    b, h, w, c = x.shape
    g = min(group, b)
    if b % g:
        raise ValueError(f"batch {b} is not a multiple of the minibatch-std group {g}")
    y = x.reshape(g, b // g, h, w, c)
    y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8).mean(axis=(1, 2, 3))  # [b // g]
    y = jnp.tile(y[:, None, None, None], (g, h, w, 1))
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Discriminator(nn.Module):
    """(images [B, R, R, 3], cond [B, cond_dim]) -> (logits [B], features [B, cond_dim]):
    residual blocks, minibatch std, and a projection of the features onto the condition.
    The features (in the condition's space) feed LAFITE's contrastive loss."""
    config: GANConfig

    @nn.compact
    def __call__(self, img: jax.Array, cond: jax.Array):
        cfg = self.config
        x = Conv(cfg.channels(cfg.resolution), 1, name="fromrgb")(img)
        for res in reversed(cfg.resolutions):
            out = cfg.channels(res // 2)
            y = Conv(cfg.channels(res), name=f"b{res}_conv0")(x)
            y = Conv(out, down=True, name=f"b{res}_conv1")(y)
            skip = Conv(out, 1, bias=False, act=False, down=True, name=f"b{res}_skip")(x)
            x = (y + skip) / SQRT2
        x = minibatch_std(x, cfg.mbstd_group)
        x = Conv(cfg.channels(4), name="b4_conv")(x)
        h = Dense(cfg.channels(4), act=True, name="b4_fc")(x.reshape(x.shape[0], -1))
        features = Dense(cfg.cond_dim, name="features")(h)
        cmap = Dense(cfg.cond_dim, name="cond_map")(cond)
        logits = Dense(1, name="out")(h)[:, 0]
        return logits + jnp.sum(features * cmap, -1) / np.sqrt(cfg.cond_dim), features
