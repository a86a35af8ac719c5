"""The FID Inception-v3 (pytorch-fid's ``fid_inception_v3``) in Flax, loading its weights file.

Images are NHWC. The network takes [-1, 1] inputs of at least 75x75; ``make_feature_fn`` adds
pytorch-fid's preprocessing (bilinear resize to 299x299 without antialiasing, then scaling to
[-1, 1]). Module and parameter names follow the PyTorch state dict, so ``Mixed_5b.branch1x1.conv
.weight`` becomes ``params['Mixed_5b']['branch1x1']['conv']['kernel']`` (OIHW -> HWIO) and BN
running statistics live in the ``batch_stats`` collection.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
INPUT_SIZE = 299
MIN_SIZE = 75
NUM_CLASSES = 1008
FEATURE_DIM = 2048


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """Convolution without bias, inference-mode BatchNorm (eps 0.001), ReLU."""
    features: int
    kernel: Any = 1
    strides: Any = 1
    padding: Any = 0
    dtype: Any = jnp.float32
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, _pair(self.kernel), _pair(self.strides),
                    padding=[(p, p) for p in _pair(self.padding)], use_bias=False,
                    dtype=self.dtype, precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x):  # TensorFlow's 3x3 average pool: padding not counted
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
    return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_down(x):
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class _Block(nn.Module):
    dtype: Any = jnp.float32
    precision: Any = "highest"

    def conv(self) -> Callable[..., BasicConv2d]:
        return functools.partial(BasicConv2d, dtype=self.dtype, precision=self.precision)


class InceptionA(_Block):
    """pytorch-fid's FIDInceptionA (35x35 grid)."""
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        c = self.conv()
        b1 = c(64, name="branch1x1")(x)
        b5 = c(64, 5, padding=2, name="branch5x5_2")(c(48, name="branch5x5_1")(x))
        b3 = c(64, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, padding=1, name="branch3x3dbl_3")(
            c(96, 3, padding=1, name="branch3x3dbl_2")(b3))
        bp = c(self.pool_features, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(_Block):
    """torchvision's InceptionB (35x35 -> 17x17 reduction)."""

    @nn.compact
    def __call__(self, x):
        c = self.conv()
        b3 = c(384, 3, strides=2, name="branch3x3")(x)
        bd = c(96, 3, padding=1, name="branch3x3dbl_2")(c(64, name="branch3x3dbl_1")(x))
        bd = c(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], -1)


class InceptionC(_Block):
    """pytorch-fid's FIDInceptionC (17x17 grid, factorized 7x7)."""
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c, c7 = self.conv(), self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = c(192, name="branch1x1")(x)
        b7 = c(c7, name="branch7x7_1")(x)
        b7 = c(192, **col, name="branch7x7_3")(c(c7, **row, name="branch7x7_2")(b7))
        bd = c(c7, name="branch7x7dbl_1")(x)
        bd = c(c7, **row, name="branch7x7dbl_3")(c(c7, **col, name="branch7x7dbl_2")(bd))
        bd = c(192, **row, name="branch7x7dbl_5")(c(c7, **col, name="branch7x7dbl_4")(bd))
        bp = c(192, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(_Block):
    """torchvision's InceptionD (17x17 -> 8x8 reduction)."""

    @nn.compact
    def __call__(self, x):
        c = self.conv()
        b3 = c(320, 3, strides=2, name="branch3x3_2")(c(192, name="branch3x3_1")(x))
        b7 = c(192, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], -1)


class InceptionE(_Block):
    """pytorch-fid's FIDInceptionE_1 (average pool) or FIDInceptionE_2 (``max_pool``)."""
    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        c = self.conv()
        split = lambda y, a, b: jnp.concatenate(
            [c(384, (1, 3), padding=(0, 1), name=a)(y), c(384, (3, 1), padding=(1, 0), name=b)(y)],
            -1)
        b1 = c(320, name="branch1x1")(x)
        b3 = split(c(384, name="branch3x3_1")(x), "branch3x3_2a", "branch3x3_2b")
        bd = c(384, 3, padding=1, name="branch3x3dbl_2")(c(448, name="branch3x3dbl_1")(x))
        bd = split(bd, "branch3x3dbl_3a", "branch3x3dbl_3b")
        bp = c(192, name="branch_pool")((_max_pool_same if self.max_pool else _avg_pool)(x))
        return jnp.concatenate([b1, b3, bd, bp], -1)


class Classifier(nn.Module):
    """The 1008-way fully connected layer on the pool3 features."""
    classes: int = NUM_CLASSES
    use_bias: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.classes))
        bias = self.param("bias", nn.initializers.zeros, (self.classes,))
        y = jnp.dot(x, kernel.astype(x.dtype), precision=self.precision)
        return y + bias.astype(x.dtype) if self.use_bias else y


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID: NHWC images in [-1, 1] -> (pool3 [B, 2048], logits [B, 1008]).

    ``logits_bias=False`` (default) leaves out the fc bias, as the original Inception Score code
    (Salimans et al.) and torch-fidelity's ``logits_unbiased`` do.
    """
    logits_bias: bool = False
    dtype: Any = jnp.float32
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"Inception input must be NHWC [B, H, W, 3] with H, W >= {MIN_SIZE}, "
                             f"got shape {x.shape}")
        kw = dict(dtype=self.dtype, precision=self.precision)
        c = functools.partial(BasicConv2d, **kw)
        x = x.astype(self.dtype)
        x = c(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = c(32, 3, name="Conv2d_2a_3x3")(x)
        x = _max_pool_down(c(64, 3, padding=1, name="Conv2d_2b_3x3")(x))
        x = c(80, 1, name="Conv2d_3b_1x1")(x)
        x = _max_pool_down(c(192, 3, name="Conv2d_4a_3x3")(x))
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features=pool, name=name, **kw)(x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(channels_7x7=c7, name=name, **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = InceptionE(max_pool=False, name="Mixed_7b", **kw)(x)
        x = InceptionE(max_pool=True, name="Mixed_7c", **kw)(x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        fc = Classifier(use_bias=self.logits_bias, precision=self.precision, name="fc")
        logits = fc(features)
        return features, logits


def preprocess(images: jax.Array, value_range: tuple[float, float] = (-1.0, 1.0),
               size: int = INPUT_SIZE) -> jax.Array:
    """NHWC uint8 (0..255) or float images in ``value_range`` -> [-1, 1] at ``size``x``size``.

    Resizes bilinearly without antialiasing, like pytorch-fid's ``F.interpolate``.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC [B, H, W, 3], got shape {images.shape}; "
                         "transpose NCHW arrays with x.transpose(0, 2, 3, 1)")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    else:
        lo, hi = value_range
        x = (images.astype(jnp.float32) - lo) / (hi - lo)
    if images.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
    return 2.0 * x - 1.0


def make_feature_fn(module: FIDInceptionV3, variables: dict,
                    value_range: tuple[float, float] = (-1.0, 1.0)) -> Callable:
    """Jitted ``images -> (pool3 features, logits)`` with pytorch-fid's preprocessing."""
    apply = jax.jit(lambda v, x: module.apply(v, preprocess(x, value_range)))
    return lambda images: apply(variables, jnp.asarray(images))


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.pth`` (needs torch), ``.safetensors`` or ``.npz`` file, keyed as in torch."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights {path} not found; expected pytorch-fid's {WEIGHTS_FILE} "
            f"(or a .safetensors/.npz with the same keys). Download it from {WEIGHTS_URL} "
            "(pytorch-fid's GitHub release 'fid_weights') on a machine with internet access.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{path} is a PyTorch file, which needs torch to read: install "
                          "torch, or convert it to .safetensors/.npz once where torch is") from err
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


_TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}


def _to_flax(array: np.ndarray) -> np.ndarray:
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T if array.ndim == 2 else array


def _torch_shape(shape: tuple) -> tuple:
    return tuple(shape[i] for i in (3, 2, 0, 1)) if len(shape) == 4 else shape[::-1]


def convert_state_dict(state: dict, module: FIDInceptionV3 | None = None) -> dict:
    """Maps a pytorch-fid Inception state dict to Flax ``{'params', 'batch_stats'}``."""
    module = module or FIDInceptionV3()
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3)))
    used, flat = set(), {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        names = [p.key for p in path]
        key = ".".join(names[1:-1] + [_TORCH_NAMES[names[-1]]])
        if key not in state:
            raise ValueError(f"FID Inception weights: tensor {key!r} is missing")
        want = _torch_shape(tuple(leaf.shape))
        if tuple(np.shape(state[key])) != want:
            raise ValueError(f"FID Inception weights: tensor {key!r} has shape "
                             f"{tuple(np.shape(state[key]))}, expected {want}")
        used.add(key)
        flat[tuple(names)] = jnp.asarray(_to_flax(np.asarray(state[key], np.float32)))
    extra = sorted(k for k in set(state) - used if not k.endswith("num_batches_tracked"))
    if extra:
        more = " ..." if len(extra) > 5 else ""
        raise ValueError(f"FID Inception weights: unexpected tensors {extra[:5]}{more}; "
                         f"is this pytorch-fid's {WEIGHTS_FILE}?")
    return traverse_util.unflatten_dict(flat)


def load_fid_inception(path: str, logits_bias: bool = False,
                       dtype=jnp.float32) -> tuple[FIDInceptionV3, dict]:
    """Loads the FID Inception weights file: returns ``(module, variables)`` for ``apply``."""
    module = FIDInceptionV3(logits_bias=logits_bias, dtype=dtype)
    try:
        return module, convert_state_dict(read_weights(path), module)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
