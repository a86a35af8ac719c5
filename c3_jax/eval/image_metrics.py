"""Image generation metrics: Fréchet distance (FID, or on CLIP features) and Inception Score.

Feature statistics stream in float64 (Chan et al.'s pairwise update), so 30k-50k samples never
have to be held at once. The Fréchet distance gets tr sqrtm(S1 S2) from symmetric
eigendecompositions and singular values, which stay real and stable where
``scipy.linalg.sqrtm(S1 @ S2)`` (the pytorch-fid formula) can turn complex on near-singular
covariances (e.g. fewer samples than feature dimensions), and is several times faster.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from c3_jax.progress import progress_bar


def _psd_factor(s: np.ndarray) -> np.ndarray:
    """F with F F^T = s over s's numerical range (eigenvalues at rounding level count as 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    keep = w > max(w.max(), 0.0) * len(w) * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{name}: mean must be [d] and covariance [d, d], got {mu.shape} and "
                         f"{sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance holds NaN or Inf")


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    _check_gaussian(mu1, s1, "first Gaussian")
    _check_gaussian(mu2, s2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature widths differ: {mu1.size} vs {mu2.size}")
    # tr sqrtm(s1 s2) is the nuclear norm of F2^T F1 for any factors s = F F^T; singular values
    # carry no square-root amplification of the rounding noise in near-zero directions.
    f1, f2 = _psd_factor(s1), _psd_factor(s2)
    tr_covmean = np.linalg.svd(f2.T @ f1, compute_uv=False).sum() if f1.size and f2.size else 0.0
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


class FeatureStats:
    """Streaming mean and covariance of feature vectors, accumulated in float64."""

    def __init__(self, dim: int | None = None):
        self.dim, self.count = dim, 0
        self._mean = self._m2 = None

    def update(self, features) -> "FeatureStats":
        """Adds a [B, d] batch of features."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(f"features must be [batch, {self.dim or 'd'}], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"features hold NaN or Inf (batch of shape {x.shape})")
        if len(x):
            mean = x.mean(0)
            centered = x - mean
            self._combine(len(x), mean, centered.T @ centered)
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Adds the samples summarized by ``other`` (e.g. another host's)."""
        if other.count:
            if self.dim is not None and other.dim != self.dim:
                raise ValueError(f"feature widths differ: {self.dim} vs {other.dim}")
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if self.count == 0:
            self.dim, self.count, self._mean, self._m2 = mean.size, n, mean.copy(), m2.copy()
            return
        total = self.count + n
        delta = mean - self._mean
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self._mean = self._mean + delta * (n / total)
        self.count = total

    def mean(self) -> np.ndarray:
        """Mean feature vector [d]."""
        if self.count < 1:
            raise ValueError("FeatureStats is empty: update it with features first")
        return self._mean.copy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance [d, d], like ``np.cov(features, rowvar=False)``."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.count}")
        return self._m2 / (self.count - 1)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that ``from_state`` restores (checkpointing, ``np.savez``)."""
        dim = self.dim or 0
        empty = self.count == 0
        return {"count": np.asarray(self.count, np.int64),
                "mean": np.zeros(dim) if empty else self._mean.copy(),
                "m2": np.zeros((dim, dim)) if empty else self._m2.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FeatureStats":
        """Restores the statistics saved by ``state``."""
        mean = np.asarray(state["mean"], np.float64)
        out = cls(mean.size or None)
        if int(state["count"]):
            out._combine(int(state["count"]), mean, np.asarray(state["m2"], np.float64))
        return out


def frechet_distance_of_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())


def feature_statistics(feature_fn: Callable, batches: Iterable, desc: str = "features",
                       stats: FeatureStats | None = None) -> FeatureStats:
    """Runs a (jitted) feature extractor over image batches and accumulates its outputs.

    A tuple output (e.g. the Inception's ``(features, logits)``) contributes its first element.
    """
    stats = stats if stats is not None else FeatureStats()
    _stream(feature_fn, batches, desc, lambda out: stats.update(_first(out)))
    return stats


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _stream(fn: Callable, batches: Iterable, desc: str, consume: Callable) -> None:
    """Calls ``fn`` on each batch, consuming each result while the next one computes."""
    pending = None
    for batch in progress_bar(batches, desc=desc, unit="batch"):
        out = fn(batch)  # dispatched asynchronously
        if pending is not None:
            consume(pending)
        pending = out
    if pending is not None:
        consume(pending)


def _log_probs(x: np.ndarray, probs: bool | None) -> np.ndarray:
    if probs is None:  # rows of non-negative numbers summing to one are probabilities
        probs = bool((x >= 0).all() and np.allclose(x.sum(1), 1.0, atol=1e-3))
    if probs:
        with np.errstate(divide="ignore"):
            return np.log(x / x.sum(1, keepdims=True))
    shifted = x - x.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def inception_score(logits_or_probs, splits: int = 10,
                    probs: bool | None = None) -> tuple[float, float]:
    """Inception Score (Salimans et al., 2016): mean and std over splits of exp(E KL(p(y|x)||p(y))).

    ``probs`` says whether the input holds class probabilities or logits (None: detect).
    """
    x = np.asarray(logits_or_probs, np.float64)
    if x.ndim != 2 or len(x) < splits or splits < 1:
        raise ValueError(f"need [N, classes] predictions with N >= splits={splits}, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("predictions hold NaN or Inf")
    logp = _log_probs(x, probs)
    scores = []
    for i in range(splits):
        part = logp[i * len(x) // splits:(i + 1) * len(x) // splits]
        p = np.exp(part)
        py = p.mean(0, keepdims=True)  # zero-probability terms contribute 0 (0 log 0 = 0)
        kl = (p * (np.where(p > 0, part, 0.0) - np.log(np.where(py > 0, py, 1.0)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _inception_fn(inception) -> Callable:
    if isinstance(inception, (str, os.PathLike)):
        from c3_jax.models import inception as inception_model
        return inception_model.make_feature_fn(*inception_model.load_fid_inception(str(inception)))
    return inception


def inception_statistics(batches: Iterable, inception, splits: int = 10,
                         desc: str = "Inception") -> tuple[FeatureStats, tuple[float, float]]:
    """Pool3 statistics and Inception Score (mean, std) of image batches.

    ``inception`` is a function ``images -> (features, logits)`` such as
    ``c3_jax.models.inception.make_feature_fn(*load_fid_inception(path))``, or the weights path
    itself (then images are NHWC uint8, or floats in [-1, 1]).
    """
    fn, stats, logits = _inception_fn(inception), FeatureStats(), []

    def consume(out):
        stats.update(out[0])
        logits.append(np.asarray(out[1], np.float32))

    _stream(fn, batches, desc, consume)
    if not logits:
        raise ValueError("no image batches were given")
    return stats, inception_score(np.concatenate(logits), splits, probs=False)


def fid_inception(batches: Iterable, reference: FeatureStats | Iterable, inception,
                  splits: int = 10, desc: str = "generated") -> dict[str, float]:
    """FID of image batches against reference statistics or batches, plus their Inception Score."""
    fn = _inception_fn(inception)
    stats, (is_mean, is_std) = inception_statistics(batches, fn, splits, desc)
    if not isinstance(reference, FeatureStats):
        reference = feature_statistics(fn, reference, "reference")
    return {"fid": frechet_distance_of_stats(stats, reference), "inception_score": is_mean,
            "inception_score_std": is_std, "count": stats.count,
            "reference_count": reference.count}
