"""StyleGAN2 (Karras et al., 2020) generator and discriminator with LAFITE's conditioning
(Zhou et al., 2022), following drboog/Lafite ``training/networks.py`` (``SynthesisLayer`` /
``ToRGBLayer`` with ``structure=2``, ``DiscriminatorEpilogue``): the condition passes two FC
layers at lr multiplier 0.01 (``pre_0``, ``pre_1``) and joins w in every style affine
(``affine_0(cat[pre_1(pre_0(c)), w])``); the discriminator's epilogue has a feature head
(``fts``) whose dot product with the condition is added to the logit.

The generator is ``Mapping`` (z -> w) then ``Synthesis`` (one w per layer, ``num_ws`` of
them, as StyleGAN2 indexes them: a block's ToRGB takes the w after its convolutions) so
that style mixing and the path-length penalty can work on the per-layer ws.

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
D_COND_SUMS = ("batch", "sample")


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
    # LAFITE's pre_0 / pre_1 (the condition's FC layers) run at lr multiplier 0.01.
    cond_lr_mul: float = 0.01
    # The discriminator's condition term: "batch" (LAFITE's code: the dot product of
    # features and condition summed over the whole batch, the same scalar added to every
    # logit) or "sample" (each example's own dot product).
    d_cond_sum: str = "batch"
    # Activations clamped to +-conv_clamp (LAFITE's commands: 256, set for its float16
    # layers); 0: none.
    conv_clamp: float = 0.0

    def __post_init__(self):
        log2 = np.log2(self.resolution)
        if self.resolution < 8 or log2 != int(log2):
            raise ValueError(f"resolution={self.resolution} must be a power of 2, >= 8")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: use one of {ARCHITECTURES}")
        if self.d_cond_sum not in D_COND_SUMS:
            raise ValueError(f"d_cond_sum={self.d_cond_sum!r}: use one of {D_COND_SUMS}")

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @property
    def resolutions(self) -> list:
        """8, 16, ..., resolution: the resolutions after the 4x4 block."""
        return [2 ** i for i in range(3, int(np.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """How many per-layer ws the synthesis network takes (StyleGAN2's ``num_ws``)."""
        return 2 * len(self.resolutions) + 2

    @property
    def cond_pre_hidden(self) -> int:
        """pre_0's width: LAFITE's ``(f_dim + 512) // 2`` with 512 read as ``cond_hidden``."""
        return (self.cond_dim + self.cond_hidden) // 2


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


def up_conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """2x upsampling convolution as StyleGAN2's ``conv2d_resample(up=2)``: the transposed
    convolution (a full convolution of the zero-inserted input; ``w`` is the correlation
    kernel, the flipped torch weight) then the [1,3,3,1] filter (gain 4, pad 1)."""
    k = w.shape[0]
    y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), ((k - 1, k - 1),) * 2,
                                     lhs_dilation=(2, 2),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return 4.0 * blur(y, 1)


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
    clamp: float = 0.0

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
        return clamp_activations(lrelu(y) if self.act else y, self.clamp)


def clamp_activations(x: jax.Array, limit: float) -> jax.Array:
    """x clipped to +-limit (StyleGAN2's ``conv_clamp``); 0: unchanged."""
    return jnp.clip(x, -limit, limit) if limit > 0 else x


# ---------------------------------------------------------------------------
# Generator


def modulated_conv(x: jax.Array, weight: jax.Array, style: jax.Array,
                   demodulate: bool = True, up: bool = False) -> jax.Array:
    """Conv (``up``: ``up_conv2d``) with weights scaled per example by ``style`` [B, in]
    (and demodulated per output channel), computed as scale-activations / shared conv /
    scale-outputs."""
    y = (up_conv2d if up else conv2d)(x * style[:, None, None, :], weight)
    if demodulate:
        sq = jnp.einsum("hwio,bi->bo", jnp.square(weight), jnp.square(style))
        y = y * jax.lax.rsqrt(sq + 1e-8)[:, None, None, :]
    return y


class Style(nn.Module):
    """LAFITE's style affine: affine_0(cat[pre_1(pre_0(cond)), w]), bias initialised to 1;
    pre_0 and pre_1 are leaky-ReLU FC layers at lr multiplier ``cond_lr_mul``."""
    features: int
    config: GANConfig

    @nn.compact
    def __call__(self, w: jax.Array, cond: jax.Array) -> jax.Array:
        cfg = self.config
        h = Dense(cfg.cond_pre_hidden, lr_mul=cfg.cond_lr_mul, act=True, name="cond_fc1")(cond)
        h = Dense(cfg.cond_hidden, lr_mul=cfg.cond_lr_mul, act=True, name="cond_fc2")(h)
        return Dense(self.features, bias_init=1.0, name="affine")(jnp.concatenate([h, w], -1))


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling 2x) + noise + bias + lrelu."""
    features: int
    config: GANConfig
    up: bool = False

    @nn.compact
    def __call__(self, x, w, cond, noise: Optional[jax.Array]):
        style = Style(x.shape[-1], self.config, name="style")(w, cond)
        weight = self.param("kernel", nn.initializers.normal(1.0), (3, 3, x.shape[-1],
                                                                    self.features))
        y = modulated_conv(x, weight / np.sqrt(9 * weight.shape[2]), style, up=self.up)
        strength = self.param("noise_strength", nn.initializers.zeros, ())
        if noise is not None:
            y = y + strength * noise[: y.shape[0], : y.shape[1], : y.shape[2]]
        y = lrelu(y + self.param("bias", nn.initializers.zeros, (self.features,)))
        return clamp_activations(y, self.config.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, not demodulated."""
    config: GANConfig

    @nn.compact
    def __call__(self, x, w, cond):
        style = Style(x.shape[-1], self.config, name="style")(w, cond)
        weight = self.param("kernel", nn.initializers.normal(1.0), (1, 1, x.shape[-1], 3))
        y = modulated_conv(x, weight / np.sqrt(x.shape[-1]), style, demodulate=False)
        y = y + self.param("bias", nn.initializers.zeros, (3,))
        return clamp_activations(y, self.config.conv_clamp)


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


def layer_noise(rng: Optional[jax.Array], index: int, batch: int, res: int):
    """The per-pixel noise of synthesis layer ``index`` [B, res, res, 1] (None: no noise)."""
    if rng is None:
        return None
    return jax.random.normal(jax.random.fold_in(rng, index), (batch, res, res, 1))


class Synthesis(nn.Module):
    """(ws [B, num_ws, w_dim], cond [B, cond_dim]) -> images [B, R, R, 3]: conv layer k takes
    ws[:, k] and a block's ToRGB the w after the block's convolutions (StyleGAN2's
    indexing); per-pixel noise from ``noise_rng`` (none when it is None)."""
    config: GANConfig

    @nn.compact
    def __call__(self, ws: jax.Array, cond: jax.Array, noise_rng: Optional[jax.Array] = None):
        cfg, b = self.config, ws.shape[0]
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, cfg.channels(4)))
        x = jnp.broadcast_to(const, (b,) + const.shape)
        x = SynthesisLayer(cfg.channels(4), cfg, name="b4_conv")(
            x, ws[:, 0], cond, layer_noise(noise_rng, 0, b, 4))
        skip = cfg.architecture == "skip"
        img = ToRGB(cfg, name="b4_torgb")(x, ws[:, 1], cond) if skip else None
        for i, res in enumerate(cfg.resolutions):
            ch = cfg.channels(res)
            x = SynthesisLayer(ch, cfg, up=True, name=f"b{res}_conv0")(
                x, ws[:, 2 * i + 1], cond, layer_noise(noise_rng, 2 * i + 1, b, res))
            x = SynthesisLayer(ch, cfg, name=f"b{res}_conv1")(
                x, ws[:, 2 * i + 2], cond, layer_noise(noise_rng, 2 * i + 2, b, res))
            if skip or res == cfg.resolution:
                rgb = ToRGB(cfg, name=f"b{res}_torgb")(x, ws[:, 2 * i + 3], cond)
                img = rgb if img is None else upsample2d(img) + rgb
        return img


def broadcast_ws(w: jax.Array, num_ws: int) -> jax.Array:
    """One w per synthesis layer: [B, w_dim] -> [B, num_ws, w_dim]."""
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))


def mix_ws(ws: jax.Array, other: jax.Array, cutoff: jax.Array) -> jax.Array:
    """StyleGAN2's style mixing: the layers from ``cutoff`` on take ``other``'s ws."""
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(layer >= cutoff, other, ws)


class Generator(nn.Module):
    """(z [B, z_dim], cond [B, cond_dim]) -> images [B, R, R, 3]: ``Mapping`` then
    ``Synthesis`` with the same w for every layer (params under 'mapping' and 'synthesis';
    ``mapping_apply`` / ``synthesis_apply`` run each part alone)."""
    config: GANConfig

    @nn.compact
    def __call__(self, z: jax.Array, cond: jax.Array, noise_rng: Optional[jax.Array] = None):
        w = Mapping(self.config, name="mapping")(z)
        return Synthesis(self.config, name="synthesis")(broadcast_ws(w, self.config.num_ws),
                                                         cond, noise_rng)


def mapping_apply(cfg: GANConfig, params: dict, z: jax.Array) -> jax.Array:
    """The generator's w for ``z`` from its params."""
    return Mapping(cfg).apply({"params": params["mapping"]}, z)


def synthesis_apply(cfg: GANConfig, params: dict, ws: jax.Array, cond: jax.Array,
                    noise_rng: Optional[jax.Array] = None) -> jax.Array:
    """The generator's images from per-layer ``ws`` [B, num_ws, w_dim], from its params."""
    return Synthesis(cfg).apply({"params": params["synthesis"]}, ws, cond, noise_rng)


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
    residual blocks, minibatch std, and LAFITE's epilogue: logit = out(h) + the dot product
    of the (unnormalized) features fts(h) with the condition, summed over the batch or per
    example as ``d_cond_sum`` says. The features feed LAFITE's contrastive loss."""
    config: GANConfig

    @nn.compact
    def __call__(self, img: jax.Array, cond: jax.Array):
        cfg = self.config
        c = cfg.conv_clamp
        x = Conv(cfg.channels(cfg.resolution), 1, clamp=c, name="fromrgb")(img)
        for res in reversed(cfg.resolutions):
            out = cfg.channels(res // 2)
            y = Conv(cfg.channels(res), clamp=c, name=f"b{res}_conv0")(x)
            y = Conv(out, down=True, clamp=c, name=f"b{res}_conv1")(y)
            skip = Conv(out, 1, bias=False, act=False, down=True, name=f"b{res}_skip")(x)
            x = (y + skip) / SQRT2
        x = minibatch_std(x, cfg.mbstd_group)
        x = Conv(cfg.channels(4), clamp=c, name="b4_conv")(x)
        h = Dense(cfg.channels(4), act=True, name="b4_fc")(x.reshape(x.shape[0], -1))
        features = Dense(cfg.cond_dim, name="features")(h)
        logits = Dense(1, name="out")(h)[:, 0]
        dot = jnp.sum(features * cond, -1)
        return logits + (jnp.sum(dot) if cfg.d_cond_sum == "batch" else dot), features
