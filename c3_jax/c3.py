"""The C^3 method: normalize, collapse (modality-mean removal) and corrupt (noise).

Everything here is a pure function of arrays (and an explicit ``rng``), so it can
be used inside a sharded, jit-compiled train step on a batch ``[B, d]``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.progress import progress_bar

# CapDec / C^3 noise for CLIP captioning: variance 0.016 (the C^3 paper, Section 4).
CLIP_SIGMA = float(np.sqrt(0.016))
NOISE_KINDS = ("none", "gaussian", "span_only", "lafite_mix")


def normalize(e: jax.Array, eps: float = 1e-12) -> jax.Array:
    """L2-normalizes embeddings along the last axis."""
    norm = jnp.linalg.norm(e, axis=-1, keepdims=True)
    return e / jnp.maximum(norm, eps)


def collapse(e: jax.Array, mean: jax.Array) -> jax.Array:
    """Collapse: removes the modality mean (closes the modality gap)."""
    return e - mean


def corrupt(rng: jax.Array, e: jax.Array, sigma: float) -> jax.Array:
    """Corrupt: adds isotropic Gaussian noise N(0, sigma^2 I)."""
    return e + sigma * jax.random.normal(rng, e.shape, e.dtype)


def corrupt_span_only(rng: jax.Array, e: jax.Array, sigma: float,
                      gap_direction: jax.Array) -> jax.Array:
    """Corrupt with the noise component along the gap direction removed (Appendix H)."""
    g = normalize(gap_direction.astype(e.dtype))
    noise = sigma * jax.random.normal(rng, e.shape, e.dtype)
    noise = noise - (noise @ g)[..., None] * g
    return e + noise


def lafite_mix(rng: jax.Array, e: jax.Array, level: float) -> jax.Array:
    """LAFITE's perturbation: normalize((1 - level) e + level n/|n|), n ~ N(0, I)."""
    n = normalize(jax.random.normal(rng, e.shape, e.dtype))
    return normalize((1.0 - level) * e + level * n)


@dataclasses.dataclass(frozen=True)
class C3Transform:
    """Per-item transform: normalize -> remove mean -> noise (train only) -> renormalize.

    Frozen (hashable), so it can be a static argument of a jitted step.
    ``sigma`` is the noise std (gaussian, span_only) or the mix level (lafite_mix).
    """
    collapse: bool = True
    noise: str = "gaussian"
    sigma: float = CLIP_SIGMA

    def __post_init__(self):
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"C3Transform.noise={self.noise!r}; expected one of {NOISE_KINDS}")
        if self.sigma < 0:
            raise ValueError(f"C3Transform.sigma={self.sigma} must be >= 0")


# The paper's named variants (Table 2 and Table 7).
VARIANTS = {
    "c1": dict(collapse=False, noise="none"),
    "c2_collapse": dict(collapse=True, noise="none"),
    "c2_corrupt": dict(collapse=False, noise="gaussian"),
    "c3": dict(collapse=True, noise="gaussian"),
    "span_only": dict(collapse=False, noise="span_only"),
    "lafite": dict(collapse=True, noise="lafite_mix"),
}


def variant(name: str, sigma: float = CLIP_SIGMA) -> C3Transform:
    """Returns the named variant of the paper (c1, c2_collapse, c2_corrupt, c3, ...)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown C^3 variant {name!r}; known: {sorted(VARIANTS)}")
    return C3Transform(sigma=sigma, **VARIANTS[name])


def apply_transform(t: C3Transform, e: jax.Array, mean: Optional[jax.Array] = None, *,
                    rng: Optional[jax.Array] = None, train: bool = False,
                    gap_direction: Optional[jax.Array] = None) -> jax.Array:
    """Applies a C3Transform to a batch of raw embeddings ``[..., d]``."""
    e = normalize(e)
    if t.collapse:
        if mean is None:
            raise ValueError("this transform collapses: pass the modality `mean`")
        e = collapse(e, mean)
    if not train or t.noise == "none":
        return normalize(e)
    if rng is None:
        raise ValueError(f"noise={t.noise!r} at train time needs an `rng`")
    if t.noise == "gaussian":
        e = corrupt(rng, e, t.sigma)
    elif t.noise == "span_only":
        if gap_direction is None:
            raise ValueError("noise='span_only' needs `gap_direction` (mean image - mean text)")
        e = corrupt_span_only(rng, e, t.sigma, gap_direction)
    else:
        e = lafite_mix(rng, e, t.sigma)
    return normalize(e)


def check_sweepable(t: C3Transform) -> None:
    """Raises unless ``apply_as_arrays`` can express the transform (a sweep member)."""
    if t.noise == "lafite_mix":
        raise ValueError("a sweep member cannot use noise='lafite_mix'; train it alone")


def member_settings(t: C3Transform, train_mean, eval_mean, dim: int) -> dict:
    """A transform's settings as arrays, for ``apply_as_arrays`` (a sweep member): the
    train and eval means (zeros without collapse), sigma (0 without noise) and the gap
    direction (eval mean - train mean for span_only, else zeros)."""
    check_sweepable(t)
    zeros = np.zeros(dim, np.float32)
    as_f32 = lambda m: zeros if m is None else np.asarray(m, np.float32)
    return {"mean": as_f32(train_mean) if t.collapse else zeros,
            "eval_mean": as_f32(eval_mean) if t.collapse else zeros,
            "sigma": np.float32(0.0 if t.noise == "none" else t.sigma),
            "gap": (as_f32(eval_mean) - as_f32(train_mean) if t.noise == "span_only"
                    else zeros)}


def apply_as_arrays(e: jax.Array, mean: jax.Array, sigma: jax.Array = 0.0,
                    gap_direction: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
                    train: bool = False) -> jax.Array:
    """The C^3 transform with every setting an array, so that the members of a vmapped sweep
    can differ: normalize, subtract ``mean`` (zeros: no collapse), at train time add
    N(0, sigma^2 I) noise (sigma 0: none) less its component along ``gap_direction``
    (zeros: isotropic noise), renormalize. Equal to ``apply_transform`` of the same variant."""
    e = normalize(e) - mean
    if train:
        noise = sigma * jax.random.normal(rng, e.shape, e.dtype)
        if gap_direction is not None:
            g = normalize(gap_direction.astype(e.dtype))
            noise = noise - (noise @ g)[..., None] * g
        e = e + noise
    return normalize(e)


class RunningMean:
    """Streaming mean of L2-normalized embeddings, accumulated in float64.

    Equal (to float64 rounding) to ``np.mean(normalized(all_embeddings), 0)``
    for data that does not fit in memory. ``state()``/``from_state`` allow resuming.
    """

    def __init__(self, dim: Optional[int] = None):
        self.dim = dim
        self.count = 0
        self.total = None if dim is None else np.zeros(dim, np.float64)

    def update(self, batch) -> "RunningMean":
        b = np.asarray(batch, np.float64)
        if b.ndim != 2:
            raise ValueError(f"RunningMean.update expects [B, d] embeddings, got shape {b.shape}")
        if self.total is None:
            self.dim, self.total = b.shape[1], np.zeros(b.shape[1], np.float64)
        if b.shape[1] != self.dim:
            raise ValueError(f"embedding width {b.shape[1]} != {self.dim} seen before")
        if not np.isfinite(b).all():
            raise ValueError("embeddings contain NaN or Inf")
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        self.total += b.sum(0)
        self.count += b.shape[0]
        return self

    def result(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("RunningMean has seen no embeddings")
        return self.total / self.count

    def state(self) -> dict:
        return {"count": self.count, "total": self.total}

    @classmethod
    def from_state(cls, state: dict) -> "RunningMean":
        m = cls(len(state["total"]))
        m.count, m.total = int(state["count"]), np.array(state["total"], np.float64)
        return m


def modality_mean(batches: Iterable, progress: bool = False) -> np.ndarray:
    """Mean of the normalized embeddings over an iterable of ``[B, d]`` batches."""
    acc = RunningMean()
    if progress:
        batches = progress_bar(batches, desc="modality mean", unit="batch")
    for b in batches:
        acc.update(b)
    return acc.result()


def calibrate_sigma(e_x, e_y, normalize_inputs: bool = True) -> dict:
    """Estimates the alignment-noise sigma from paired embeddings (Proposition 1).

    The residual ``(e_x - e_y) - mean(e_x - e_y)`` of normalized pairs is the
    alignment noise; its per-dimension std gives ``sigma_per_dim`` and their RMS the
    isotropic ``sigma`` to use in Corrupt.
    """
    x, y = np.asarray(e_x, np.float64), np.asarray(e_y, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"paired embeddings must both be [n, d]; got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("calibration needs at least 2 pairs")
    if normalize_inputs:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    diff = x - y
    per_dim = (diff - diff.mean(0)).std(0, ddof=1)
    return {"sigma": float(np.sqrt(np.mean(per_dim ** 2))), "sigma_per_dim": per_dim,
            "gap": diff.mean(0), "num_pairs": int(x.shape[0])}
