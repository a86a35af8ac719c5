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


# Every method a run or a sweep member can use: the paper's variants, the gap-closing
# methods after C^3 (realign, capdec_offset, decap) and this project's own (c3_aniso,
# c3_standardize, std_match); 'lafite': sigma is the mix level. ``member_settings`` says
# what each is.
METHODS = ("c1", "c2_collapse", "c2_corrupt", "c3", "span_only", "lafite", "c3_aniso",
           "c3_standardize", "std_match", "realign", "capdec_offset", "decap")
NOISY = ("c2_corrupt", "c3", "span_only", "lafite", "c3_aniso", "c3_standardize",
         "capdec_offset")
COLLAPSING = ("c2_collapse", "c3", "c3_aniso", "c3_standardize")
# Names that meant something else before, and what to use now.
RENAMED = {"c3_std": "c3_standardize"}
# DeCap's projection: softmax(similarity / 0.01) over the memory of text embeddings.
DECAP_TEMPERATURE = 0.01


def check_method(name: str) -> None:
    """Raises unless ``name`` is one of ``METHODS`` (what ``member_settings`` expresses)."""
    if name in RENAMED:
        raise ValueError(f"method {name!r} is now {RENAMED[name]!r} (it was never TOMCap's "
                         f"mapping); use {RENAMED[name]!r}")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {list(METHODS)}")


@dataclasses.dataclass(frozen=True)
class Moments:
    """Per-dimension mean and standard deviation of a modality's normalized embeddings."""
    mean: np.ndarray
    std: np.ndarray

    @property
    def trace(self) -> float:
        """The total variance (trace of the covariance)."""
        return float(np.sum(np.square(self.std, dtype=np.float64)))


def member_settings(method: str, sigma: float, train: Moments, evaluation: Moments,
                    noise: Optional[dict] = None, renormalize: bool = True,
                    centroid: Optional[np.ndarray] = None) -> dict:
    """A method's settings as arrays, for ``member_train`` / ``member_eval``, from the moments
    of the training modality (``train``) and of the modality met at inference
    (``evaluation``), both over the training split, for 'c3_aniso' the residual noise
    model (``geometry.residual_noise``: per-dimension std and factor at unit RMS) and for
    'realign' the ``centroid`` of its Anchor-and-Trace output over the training set
    (``realign_centroid``). With a noise model every member's ``factor`` has its shape
    (zeros where unused), so that the members of a sweep stack.

    - c1 / c2_collapse / c2_corrupt / c3 / span_only: the paper's variants.
    - lafite: LAFITE's perturbation as the official C^3 baseline script runs it (Table 3:
      no Collapse): ``n((1 - sigma) n(e) + sigma u/|u|)``, u ~ N(0, I), sigma the mix
      level (0.75 in the C^3 script); inference: normalize.
    - c3_aniso (this project's own method, not AnisoAlign): Collapse, then Corrupt with
      noise of the covariance of calibration pairs' residual (shrunk, see
      ``geometry.residual_noise``), scaled so its mean per-dimension variance is sigma^2
      (at the calibrated sigma: the covariance itself).
    - c3_standardize (this project's own): Collapse, then each dimension scaled to the
      modality's RMS std (every dimension the same std; total variance kept, so sigma
      means what it means in c3), then Corrupt; at inference the eval modality is
      standardized with its own moments.
    - std_match (our reading of per-dimension moment matching; TOMCap's exact mapping is
      unverified): ``n((n(e) - mu_T) / sd_T * sd_I + mu_I)`` with the training and eval
      modalities' per-dimension moments; no noise; inference: normalize.
    - realign: ReAlign (Yu-xm/ReVision ``embed_ReAlign.py``), training modality only:
      Anchor and Trace ``y = n(s (n(e) - mu_T) + mu_I)``, s = sqrt(T_I / T_T) with T the
      mean squared distance to the modality mean (the trace of its covariance); Centroid
      ``n(y - centroid + mu_I)``; inference: normalize (images unchanged).
    - capdec_offset: CapDec (Corrupt) with the modality offset (eval mean - train mean) added
      to the training embeddings.
    - decap: trained as c1; at inference the embedding is replaced by its projection onto
      the memory of training embeddings (``project_to_memory``).

    ``renormalize`` False leaves out the final normalization of both transforms (the
    official semi-supervised stage 2: normalize, remove the mean, nothing more).
    """
    check_method(method)
    f32 = lambda a: np.asarray(a, np.float32)
    d = len(train.mean)
    zeros, ones = np.zeros(d, np.float32), np.ones(d, np.float32)
    rank = 0 if noise is None else np.shape(noise["factor"])[1]
    s = {"mean": zeros, "scale": ones, "shift": zeros, "sigma": zeros,
         "factor": np.zeros((d, rank), np.float32), "gap": zeros, "eval_mean": zeros,
         "eval_scale": ones, "mix": np.float32(0.0), "project": np.float32(0.0),
         "renormalize": np.float32(1.0 if renormalize else 0.0),
         "centroid": np.float32(0.0), "recenter": zeros}
    if method in COLLAPSING:
        s["mean"], s["eval_mean"] = f32(train.mean), f32(evaluation.mean)
    if method in NOISY and method != "lafite":
        s["sigma"] = np.full(d, sigma, np.float32)
    if method == "lafite":
        s["scale"], s["mix"] = np.full(d, 1.0 - sigma, np.float32), np.float32(sigma)
    elif method == "span_only":
        s["gap"] = f32(evaluation.mean) - f32(train.mean)
    elif method == "c3_aniso":
        if noise is None:
            raise ValueError("method 'c3_aniso' needs the residual noise model")
        s["sigma"], s["factor"] = f32(sigma * noise["std"]), f32(sigma * noise["factor"])
    elif method == "c3_standardize":
        s["scale"], s["eval_scale"] = _rms_over_std(train.std), _rms_over_std(evaluation.std)
    elif method == "std_match":
        s["mean"], s["shift"] = f32(train.mean), f32(evaluation.mean)
        s["scale"] = f32(np.asarray(evaluation.std, np.float64)
                         / np.maximum(np.asarray(train.std, np.float64), 1e-12))
    elif method == "realign":
        if centroid is None:
            raise ValueError("method 'realign' needs the centroid of its transformed training "
                             "set (c3.realign_centroid)")
        s["mean"], s["shift"] = f32(train.mean), f32(evaluation.mean)
        s["scale"] = np.full(d, realign_scale(train, evaluation), np.float32)
        s["centroid"] = np.float32(1.0)
        s["recenter"] = f32(np.asarray(evaluation.mean, np.float64)
                            - np.asarray(centroid, np.float64))
    elif method == "capdec_offset":
        s["mean"] = f32(train.mean) - f32(evaluation.mean)
    elif method == "decap":
        s["project"] = np.float32(1.0)
    return s


def _rms_over_std(std) -> np.ndarray:
    std = np.maximum(np.asarray(std, np.float64), 1e-12)
    return (np.sqrt(np.mean(std ** 2)) / std).astype(np.float32)


def realign_scale(train: Moments, evaluation: Moments) -> float:
    """ReAlign's Trace scale sqrt(T_eval / T_train), T the mean squared distance of a
    modality's normalized embeddings to their mean (the official 1e-10 guard included)."""
    return float(np.sqrt(evaluation.trace / (train.trace + 1e-10)))


def realign_anchor_trace(e, train: Moments, evaluation: Moments) -> np.ndarray:
    """ReAlign's Anchor and Trace steps in float64: n(s (n(e) - mu_train) + mu_eval)."""
    x = np.asarray(e, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    y = ((x - np.asarray(train.mean, np.float64)) * realign_scale(train, evaluation)
         + np.asarray(evaluation.mean, np.float64))
    return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


def realign_centroid(batches: Iterable, train: Moments, evaluation: Moments) -> np.ndarray:
    """ReAlign's Centroid statistic: the mean of ``realign_anchor_trace`` over every row of
    the training modality's ``[B, d]`` batches (float64)."""
    total, count = None, 0
    for b in batches:
        y = realign_anchor_trace(b, train, evaluation)
        total = y.sum(0) if total is None else total + y.sum(0)
        count += y.shape[0]
    if count == 0:
        raise ValueError("realign_centroid has seen no embeddings")
    return total / count


def member_train(s: dict, e: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    """A method's training-side transform with its settings ``s`` as arrays (so that the
    members of one sweep program can differ): normalize, subtract ``mean``, scale, add
    ``shift``; where ``centroid`` is set, normalize and add ``recenter`` (ReAlign's Centroid
    step); with an ``rng``, add noise ``sigma * z`` (per dimension) ``+ factor @ z'``
    less its component along ``gap`` (zeros: none); renormalize. For the paper's variants
    the composition of ``collapse``, ``corrupt`` / ``corrupt_span_only`` / ``lafite_mix``."""
    e = (normalize(e) - s["mean"]) * s["scale"] + s["shift"]
    # As a scale of 1 where unset, not a select: the other methods stay bitwise as before.
    norm = jnp.linalg.norm(e, axis=-1, keepdims=True)
    e = e * jnp.where(s["centroid"] > 0, 1.0 / jnp.maximum(norm, 1e-12), 1.0) + s["recenter"]
    if rng is not None:
        e = e + member_noise(s, rng, e.shape, e.dtype)
    return renormalize(s, e)


def renormalize(s: dict, e: jax.Array) -> jax.Array:
    """The last step of both transforms: ``normalize(e)``, or ``e`` itself where the settings'
    ``renormalize`` is 0 (the official semi-supervised stage 2 stops after mean removal)."""
    return jnp.where(s.get("renormalize", 1.0) > 0, normalize(e), e)


def member_noise(s: dict, rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """Corrupt's noise of settings ``s``: ``sigma * z + mix * z/|z| + z' @ factor^T`` (z, z'
    standard normal), less its component along ``gap``; covariance diag(sigma^2) + factor
    factor^T when ``mix`` is 0 (projected off the gap direction)."""
    z = jax.random.normal(rng, shape, dtype)
    noise = s["sigma"] * z + s["mix"] * normalize(z)
    rank = s["factor"].shape[-1]
    if rank:
        z = jax.random.normal(jax.random.fold_in(rng, 1), shape[:-1] + (rank,), dtype)
        noise = noise + z @ s["factor"].T.astype(dtype)
    g = normalize(s["gap"].astype(dtype))
    return noise - (noise @ g)[..., None] * g


def member_eval(s: dict, e: jax.Array, projected: Optional[jax.Array] = None) -> jax.Array:
    """A method's inference-side transform: normalize; where ``project`` is set, take
    ``projected`` (``project_to_memory`` of the same rows) instead; subtract ``eval_mean``,
    scale by ``eval_scale``, renormalize."""
    e = normalize(e)
    if projected is not None:
        e = jnp.where(s["project"] > 0, projected.astype(e.dtype), e)
    return renormalize(s, (e - s["eval_mean"]) * s["eval_scale"])


def project_to_memory(e: jax.Array, memory: jax.Array, temperature: float = DECAP_TEMPERATURE,
                      chunk: int = 8192) -> jax.Array:
    """DeCap's projection: sum_j softmax_j(<e, m_j> / temperature) m_j over the memory rows
    ``m_j`` (normalized here, like ``e``), computed ``chunk`` memory rows at a time with a
    running log-sum-exp, so the memory's [n, M] similarity matrix never exists whole."""
    e = normalize(e).astype(jnp.float32)
    m = normalize(memory).astype(jnp.float32)
    size = m.shape[0]
    chunk = min(chunk, size)
    pad = -size % chunk
    m = jnp.concatenate([m, jnp.zeros((pad, m.shape[1]), m.dtype)]).reshape(-1, chunk, m.shape[1])
    valid = (jnp.arange(m.shape[0] * chunk) < size).reshape(-1, chunk)

    def add(carry, block):
        top, total, acc = carry
        rows, ok = block
        logits = jnp.where(ok, e @ rows.T / temperature, -jnp.inf)
        new_top = jnp.maximum(top, logits.max(-1))
        keep = jnp.exp(top - new_top)
        p = jnp.exp(logits - new_top[:, None])
        return (new_top, total * keep + p.sum(-1), acc * keep[:, None] + p @ rows), None

    n = e.shape[0]
    start = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros_like(e))
    _, total, acc = jax.lax.scan(add, start, (m, valid))[0]
    return acc / total[:, None]


class RunningMoments:
    """Streaming per-dimension mean and std of L2-normalized embeddings, accumulated in
    float64: equal (to float64 rounding) to ``np.mean`` / ``np.std`` of all the normalized
    embeddings, for data that does not fit in memory. ``state()``/``from_state`` resume."""

    def __init__(self, dim: Optional[int] = None):
        self.dim = dim
        self.count = 0
        self.total = None if dim is None else np.zeros(dim, np.float64)
        self.squares = None if dim is None else np.zeros(dim, np.float64)

    def update(self, batch) -> "RunningMoments":
        b = np.asarray(batch, np.float64)
        if b.ndim != 2:
            raise ValueError(f"RunningMoments.update expects [B, d] embeddings, got shape "
                             f"{b.shape}")
        if self.total is None:
            self.dim = b.shape[1]
            self.total, self.squares = np.zeros(self.dim), np.zeros(self.dim)
        if b.shape[1] != self.dim:
            raise ValueError(f"embedding width {b.shape[1]} != {self.dim} seen before")
        if not np.isfinite(b).all():
            raise ValueError("embeddings contain NaN or Inf")
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        self.total += b.sum(0)
        self.squares += np.square(b).sum(0)
        self.count += b.shape[0]
        return self

    def result(self) -> np.ndarray:
        """The mean."""
        if self.count == 0:
            raise ValueError("RunningMoments has seen no embeddings")
        return self.total / self.count

    def moments(self) -> Moments:
        mean = self.result()
        var = np.maximum(self.squares / self.count - mean ** 2, 0.0)
        return Moments(mean, np.sqrt(var))

    def state(self) -> dict:
        return {"count": self.count, "total": self.total, "squares": self.squares}

    @classmethod
    def from_state(cls, state: dict) -> "RunningMoments":
        m = cls(len(state["total"]))
        m.count, m.total = int(state["count"]), np.array(state["total"], np.float64)
        m.squares = np.array(state["squares"], np.float64)
        return m


def modality_mean(batches: Iterable, progress: bool = False) -> np.ndarray:
    """Mean of the normalized embeddings over an iterable of ``[B, d]`` batches."""
    acc = RunningMoments()
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
