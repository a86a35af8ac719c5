"""Geometry of the multi-modal contrastive space (Section 3, Appendices C, G, I).

Effective dimension, the Table 1 gap statistics, the structure of the gap (residual
anisotropy, the mean gap's share, subspace overlap, transfer across clusters), the
synthetic contrastive run, MLP dimensional collapse, Lemma 2's stable region and
gap-distance shifts.
All heavy work is jit/scan based; only per-block summaries come back to the host.
"""
from __future__ import annotations

import functools
import math
import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.c3 import calibrate_sigma, normalize
from c3_jax.progress import progress_bar

# ---------------------------------------------------------------------------
# Effective dimension (Definition 1)


def _covariance(x: jax.Array) -> jax.Array:
    """Sample covariance [d, d] of the rows of ``x`` [n, d], in float32."""
    x = x.astype(jnp.float32)
    xc = x - x.mean(0)
    return (xc.T @ xc) / max(x.shape[0] - 1, 1)


@jax.jit
def _covariance_spectrum_jit(x: jax.Array) -> jax.Array:
    # The covariance is symmetric PSD: its singular values are its eigenvalues.
    return jnp.clip(jnp.linalg.eigvalsh(_covariance(x))[::-1], 0.0)


def covariance_spectrum(x, overwrite_input: bool = False) -> jax.Array:
    """Singular values (descending) of the covariance matrix of rows of ``x`` [n, d].

    Host numpy input on a CPU backend goes through BLAS, whose ``xc.T @ xc`` is a
    symmetric rank-k update (half the FLOPs of the general matmul XLA runs). With
    ``overwrite_input`` a float32 numpy ``x`` is centered in place instead of copied.
    """
    if isinstance(x, np.ndarray) and jax.default_backend() == "cpu":
        mean = x.mean(0, dtype=np.float64).astype(np.float32)
        if overwrite_input and x.dtype == np.float32 and x.flags.writeable:
            xc = x
            xc -= mean
        else:
            xc = x.astype(np.float32) - mean
        cov = (xc.T @ xc).astype(np.float64) / max(x.shape[0] - 1, 1)
        return jnp.asarray(np.maximum(np.linalg.eigvalsh(cov)[::-1], 0.0))
    return _covariance_spectrum_jit(jnp.asarray(x))


def effective_dimension_of_spectrum(s, gamma: float = 0.99) -> int:
    """Smallest d' whose leading singular values reach ``gamma`` of their sum."""
    s = np.sort(np.asarray(s, np.float64))[::-1]
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must lie in (0, 1]")
    frac = np.cumsum(s) / s.sum()
    return int(np.searchsorted(frac, gamma - 1e-12) + 1)


def effective_dimension(x, gamma: float = 0.99) -> int:
    """Effective dimension d_e of a representation matrix ``x`` [n, d] (Definition 1)."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    return effective_dimension_of_spectrum(covariance_spectrum(x), gamma)


# ---------------------------------------------------------------------------
# Table 1 / Figure 8 statistics

STAT_NAMES = ("gap_length", "gap_direction", "gap_orthogonality", "noise_mean",
              "noise_direction")
HIST_BINS = 1000
COS_EDGES = np.linspace(-1.0, 1.0, HIST_BINS + 1)


def group_indices(rng: jax.Array, n: int, group_size: int, order=None) -> np.ndarray:
    """Random disjoint groups of pair indices, shape [n // group_size, group_size]: the first
    rows of ``order`` (a permutation of the n pairs; drawn from ``rng`` when None)."""
    if n < 2 * group_size:
        raise ValueError(f"need at least 2 groups of {group_size} pairs, got {n} pairs")
    num_groups = n // group_size
    if order is None:
        perm = np.asarray(jax.random.permutation(rng, n))
    else:
        perm = np.asarray(order)
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise ValueError(f"order must be a permutation of the {n} pairs, got shape "
                             f"{perm.shape}")
    return perm[: num_groups * group_size].reshape(num_groups, group_size)


def _masked_moments(v: jax.Array, mask: jax.Array, lo=-1.0, hi=1.0):
    """Per-group (count, mean, M2) of ``v`` [g, m, m] where ``mask``, and their histogram
    in HIST_BINS uniform bins over [lo, hi]."""
    w = mask.astype(v.dtype)
    n = w.sum((1, 2))
    mean = (v * w).sum((1, 2)) / jnp.maximum(n, 1.0)
    m2 = (jnp.square(v - mean[:, None, None]) * w).sum((1, 2))
    return n, mean, m2, _histogram(v, w, lo, hi)


def _histogram(v: jax.Array, w: jax.Array, lo, hi) -> jax.Array:
    """Weighted counts of ``v`` in HIST_BINS uniform bins over [lo, hi] (outliers clipped)."""
    scaled = (v - lo) * (HIST_BINS / (hi - lo))
    idx = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, HIST_BINS - 1)
    return jnp.zeros(HIST_BINS, jnp.float32).at[idx.ravel()].add(w.ravel().astype(jnp.float32))


def _combine_moments(n, mean, m2) -> dict:
    """Chan et al. parallel combination of block moments, in float64."""
    n, mean, m2 = (np.asarray(a, np.float64).ravel() for a in (n, mean, m2))
    total = n.sum()
    mu = (n * mean).sum() / total
    var = (m2.sum() + (n * np.square(mean - mu)).sum()) / total
    return {"mean": float(mu), "std": float(np.sqrt(max(var, 0.0))), "count": int(total)}


@jax.jit
def _chunk_summaries(xg: jax.Array, yg: jax.Array):
    """Gap vectors, noise sums and pair-statistic moments for a chunk of groups [g, m, d]."""
    m = xg.shape[1]
    d_j = xg - yg
    gap = d_j.mean(1)
    # Gap orthogonality: cos(d, r_jk) with r_jk = x_j - x_k over ordered pairs j != k.
    a = jnp.einsum("gmd,gd->gm", xg, gap)
    gram = jnp.einsum("gmd,gnd->gmn", xg, xg)
    sq = jnp.diagonal(gram, axis1=1, axis2=2)
    r_norm2 = sq[:, :, None] + sq[:, None, :] - 2.0 * gram
    # Skips j == k and duplicated items (e.g. 5 captions per image), up to float32 rounding.
    distinct = r_norm2 > 1e-5 * (sq[:, :, None] + sq[:, None, :])
    gap_norm = jnp.maximum(jnp.linalg.norm(gap, axis=-1), 1e-12)[:, None, None]
    orth = (a[:, :, None] - a[:, None, :]) / (jnp.sqrt(jnp.where(distinct, r_norm2, 1.0)) * gap_norm)
    # Noise direction: cos(eps_j, eps_k), j < k.
    eps = d_j - gap[:, None, :]
    eps_gram = jnp.einsum("gmd,gnd->gmn", eps, eps)
    eps_norm = jnp.sqrt(jnp.maximum(jnp.diagonal(eps_gram, axis1=1, axis2=2), 1e-24))
    noise_cos = eps_gram / (eps_norm[:, :, None] * eps_norm[:, None, :])
    upper = jnp.broadcast_to(jnp.triu(jnp.ones((m, m), bool), 1), noise_cos.shape)
    return gap, eps.sum((0, 1)), _masked_moments(orth, distinct), _masked_moments(noise_cos, upper)


@functools.partial(jax.jit, static_argnames="block")
def _pairwise_cos_moments(u: jax.Array, lo=-1.0, hi=1.0, block: int = 256):
    """Moments and [lo, hi] histogram of cos(u_i, u_j) over i < j, in row blocks."""
    g = u.shape[0]
    pad = (-g) % block
    un = jnp.pad(normalize(u), ((0, pad), (0, 0)))
    rows = jnp.arange(g + pad).reshape(-1, block)
    cols = jnp.arange(g)

    def one(args):
        ub, rb = args
        mask = (cols[None, :] > rb[:, None]) & (rb[:, None] < g)
        n, mean, m2, hist = _masked_moments((ub @ un[:g].T)[None], mask[None], lo, hi)
        return n[0], mean[0], m2[0], hist

    return jax.lax.map(one, (un.reshape(-1, block, u.shape[1]), rows))


def _summary(values: np.ndarray, bins: int = 50) -> dict:
    values = np.asarray(values, np.float64)
    hist, edges = np.histogram(values, bins=bins)
    return {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size),
            "hist": hist.tolist(), "edges": edges.tolist()}


def _moment_summary(moments, lo: float = -1.0, hi: float = 1.0) -> dict:
    n, mean, m2, hist = (np.asarray(a) for a in moments)
    out = _combine_moments(n, mean, m2)
    out["hist"] = hist.reshape(-1, HIST_BINS).sum(0).astype(np.int64).tolist()
    out["edges"] = np.linspace(lo, hi, HIST_BINS + 1).tolist()
    return out


def _gap_direction_summary(gaps: np.ndarray) -> dict:
    """cos(d_i, d_j) over group pairs; a second pass bins it around its own spread."""
    u = jnp.asarray(gaps, jnp.float32)
    first = _combine_moments(*_pairwise_cos_moments(u)[:3])
    half = max(6 * first["std"], 1e-6)
    lo, hi = max(first["mean"] - half, -1.0), min(first["mean"] + half, 1.0)
    return _moment_summary(_pairwise_cos_moments(u, lo, hi), lo, hi)


# The official notebook (geometry_analysis/analyze_gap.ipynb) measures orthogonality as
# cos(x_{i+1} - x_i, m): consecutive image rows in the data's own order against the mean
# gap m of the shuffled pairs kept in its groups. Its mean is ~0 for any space whose rows
# come in random order (the differences are symmetric about 0), so only its spread says
# something, and only beside a baseline: for a random unit direction u, E[cos^2] = 1/d
# whatever the data, a std of ~1/sqrt(d) (0.044 at d = 512).
ORTHOGONALITY_RANDOM_DIRECTIONS = 64


def consecutive_difference_cosines(x, directions) -> np.ndarray:
    """cos(x_{i+1} - x_i, u_k) [n - 1, k] over rows of ``x`` [n, d] in their order, for
    ``directions`` u [k, d]; a zero difference (a repeated row) gives 0, as torch's
    cosine_similarity does (norms clamped at 1e-8)."""
    x = np.asarray(x, np.float32)
    u = np.asarray(directions, np.float32)
    diff = x[1:] - x[:-1]
    diff_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", diff, diff)), 1e-8)
    u_norm = np.maximum(np.linalg.norm(u, axis=1), 1e-8)
    return (diff @ u.T) / diff_norm[:, None] / u_norm[None, :]


def random_directions(rng: jax.Array, num: int, dim: int) -> np.ndarray:
    """``num`` unit directions [num, dim] drawn uniformly on the sphere."""
    u = np.asarray(jax.random.normal(rng, (num, dim)), np.float64)
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def _column_moments(values: np.ndarray) -> tuple:
    """Per-column (count, mean, M2) of ``values`` [m, k] in float64."""
    v = np.asarray(values, np.float64)
    mean = v.mean(0)
    return np.full(v.shape[1], v.shape[0], np.float64), mean, np.square(v - mean).sum(0)


def _merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s combination of two per-column (count, mean, M2) triples."""
    (na, ma, qa), (nb, mb, qb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, qa + qb + np.square(delta) * na * nb / n


def gap_orthogonality(e_x, mean_gap, rng: jax.Array,
                      num_random: int = ORTHOGONALITY_RANDOM_DIRECTIONS,
                      normalize_inputs: bool = True, chunk: int = 65536) -> dict:
    """The official notebook's gap orthogonality, cos(x_{i+1} - x_i, m) over consecutive
    rows of the (normalized) image embeddings ``e_x`` [n, d] in their given order, against
    the mean gap ``mean_gap`` m [d], beside the same statistic for ``num_random`` random
    unit directions in place of m (same rows): mean, std (ddof 1, as the notebook's figure),
    histogram, the number of zero differences (repeated rows, which count as 0 in both),
    the random directions' pooled std (their root-mean-square per-direction std; ~1/sqrt(d))
    with the 5th/50th/95th percentiles of their per-direction std, ``std_ratio`` (the gap's
    std over the pooled random one: below 1, the gap is more orthogonal to the image
    differences than chance) and ``chance_share`` (the share of random directions whose
    std is at most the gap's). Rows stream ``chunk`` at a time (host arrays, memory maps)."""
    n, d = e_x.shape
    if n < 3:
        raise ValueError(f"gap orthogonality needs at least 3 rows of e_x, got {n}")
    if num_random < 1:
        raise ValueError(f"num_random={num_random} must be >= 1")
    gap = np.asarray(mean_gap, np.float32).reshape(1, d)
    directions = np.concatenate([gap, random_directions(rng, num_random, d)])
    moments, zeros = None, 0
    gap_hist = np.zeros(HIST_BINS, np.int64)
    random_hist = np.zeros(HIST_BINS, np.int64)
    for lo in range(0, n - 1, chunk):
        rows = np.asarray(e_x[lo:lo + chunk + 1], np.float32)
        if normalize_inputs:
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        diff = rows[1:] - rows[:-1]
        zeros += int(np.count_nonzero(~diff.any(axis=1)))
        cos = consecutive_difference_cosines(rows, directions)
        part = _column_moments(cos)
        moments = part if moments is None else _merge_moments(moments, part)
        gap_hist += np.histogram(cos[:, 0], bins=COS_EDGES)[0]
        random_hist += np.histogram(cos[:, 1:], bins=COS_EDGES)[0]
    count, mean, m2 = moments
    std = np.sqrt(m2 / (count - 1))
    random_std = float(np.sqrt(np.mean(np.square(std[1:]))))
    pooled_mean = float(mean[1:].mean())
    return {
        "mean": float(mean[0]), "std": float(std[0]), "count": int(count[0]),
        "hist": gap_hist.tolist(), "edges": COS_EDGES.tolist(), "repeated_rows": zeros,
        "random": {"directions": num_random, "mean": pooled_mean, "std": random_std,
                   "std_percentiles": {str(q): float(np.percentile(std[1:], q))
                                       for q in (5, 50, 95)},
                   "hist": random_hist.tolist()},
        "std_ratio": float(std[0] / random_std) if random_std > 0 else float("nan"),
        "chance_share": float(np.mean(std[1:] <= std[0])),
    }


def gap_statistics(e_x, e_y, rng: jax.Array, group_size: int = 100,
                   normalize_inputs: bool = True, group_batch: int = 128,
                   progress: bool = False, order=None,
                   num_random: int = ORTHOGONALITY_RANDOM_DIRECTIONS) -> dict:
    """The five statistics of Table 1 / Figure 8 on paired embeddings ``[n, d]``, as the
    official notebook computes them.

    Pairs are shuffled (``order``, a permutation of the pairs; drawn from ``rng`` when None)
    and split into groups of ``group_size``. With individual gap d_j = e_x_j - e_y_j, group
    gap d = E_j[d_j], mean gap m = E_i[d_i] and alignment noise eps_j = d_j - d, reports
    mean/std/histogram of |d|, cos(d_i, d_j) (i < j), the notebook's gap orthogonality
    cos(e_x_{i+1} - e_x_i, m) over consecutive rows in the given order, beside random
    directions (``gap_orthogonality``), E[eps] per dimension and cos(eps_j, eps_k) (j < k,
    same group). ``gap_orthogonality_within_group`` is the paper's text's reading,
    cos(d, r_jk) over image differences r_jk = e_x_j - e_x_k (j != k, same group; repeated
    images skipped): antisymmetric in (j, k), so its mean is 0 for every space.

    Inputs may be host arrays (numpy, memory-mapped): groups are gathered and sent to
    the device ``group_batch`` at a time, so the data never needs to fit on the device.
    """
    if e_x.shape != e_y.shape or len(e_x.shape) != 2:
        raise ValueError(f"paired embeddings must both be [n, d]; got {e_x.shape} and {e_y.shape}")
    idx = group_indices(rng, e_x.shape[0], group_size, order)
    prep = (lambda e: normalize(jnp.asarray(e, jnp.float32))) if normalize_inputs else (
        lambda e: jnp.asarray(e, jnp.float32))
    parts = []
    chunks = range(0, idx.shape[0], group_batch)
    if progress:
        chunks = progress_bar(chunks, desc="gap statistics", unit="chunk")
    for start in chunks:
        rows = idx[start:start + group_batch]
        gather = lambda e: prep(np.take(e, rows.ravel(), axis=0).reshape(*rows.shape, -1))
        parts.append(_chunk_summaries(gather(e_x), gather(e_y)))
    gaps = np.concatenate([np.asarray(p[0], np.float64) for p in parts])
    stack = lambda k: [np.concatenate([np.ravel(p[k][i]) for p in parts]) for i in range(4)]
    noise_mean = np.sum([np.asarray(p[1], np.float64) for p in parts], 0) / idx.size
    mean_gap = gaps.mean(0)
    return {
        "num_groups": int(idx.shape[0]),
        "group_size": group_size,
        "gap_length": _summary(np.linalg.norm(gaps, axis=1)),
        "gap_direction": _gap_direction_summary(gaps),
        "gap_orthogonality": gap_orthogonality(e_x, mean_gap, jax.random.fold_in(rng, 1),
                                               num_random, normalize_inputs),
        "gap_orthogonality_within_group": _moment_summary(stack(2)),
        "noise_mean": _summary(noise_mean),
        "noise_direction": _moment_summary(stack(3)),
        "mean_gap_vector": mean_gap,
    }


def recall_at_1(e_x, e_y) -> float:
    """Fraction of rows of ``e_x`` whose most cosine-similar row of ``e_y`` is their pair."""
    x, y = normalize(jnp.asarray(e_x, jnp.float32)), normalize(jnp.asarray(e_y, jnp.float32))
    return float(jnp.mean(jnp.argmax(x @ y.T, axis=1) == jnp.arange(x.shape[0])))


def linear_readout(x_train, labels_train, x_eval, labels_eval, ridge: float = 1e-2) -> float:
    """How well a label can be read linearly from embeddings: the accuracy on ``x_eval`` of
    a one-vs-rest ridge regression (with a bias; ``ridge`` times the identity) fitted on
    the normalized ``x_train``; rows labelled < 0 (not applicable) are left out. NaN when
    no train or no eval row is labelled."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    x_train, x_eval = (unit(np.asarray(x, np.float64)) for x in (x_train, x_eval))
    y_train, y_eval = np.asarray(labels_train), np.asarray(labels_eval)
    if len(x_train) != len(y_train) or len(x_eval) != len(y_eval):
        raise ValueError("every embedding row needs one label")
    x_train, y_train = x_train[y_train >= 0], y_train[y_train >= 0]
    x_eval, y_eval = x_eval[y_eval >= 0], y_eval[y_eval >= 0]
    if not len(y_eval) or not len(y_train):
        return float("nan")
    classes = np.unique(y_train)
    a = np.concatenate([x_train, np.ones((len(x_train), 1))], 1)
    targets = (y_train[:, None] == classes[None]).astype(np.float64)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
    scores = np.concatenate([x_eval, np.ones((len(x_eval), 1))], 1) @ w
    return float(np.mean(classes[scores.argmax(1)] == y_eval))


def space_summary(e_x, e_y, rng: jax.Array, group_size: int = 100,
                  gamma: float = 0.99) -> dict:
    """The headline geometry of paired embeddings, as scalars: the gap (of the means, and
    Table 1's per-group length and direction cosine), the notebook's orthogonality (mean,
    std, the random directions' std and the ratio of the two) and the paper text's
    within-group reading (std), noise direction, calibrated sigma, effective dimensions and
    x->y retrieval R@1."""
    x = np.asarray(normalize(jnp.asarray(e_x, jnp.float32)), np.float64)
    y = np.asarray(normalize(jnp.asarray(e_y, jnp.float32)), np.float64)
    stats = gap_statistics(x, y, rng, group_size, normalize_inputs=False)
    calibrated = calibrate_sigma(x, y, normalize_inputs=False)
    return {
        "modality_gap": float(np.linalg.norm(calibrated["gap"])),
        "gap_length": stats["gap_length"]["mean"],
        "gap_direction_cos": stats["gap_direction"]["mean"],
        "orthogonality_mean": stats["gap_orthogonality"]["mean"],
        "orthogonality_std": stats["gap_orthogonality"]["std"],
        "orthogonality_random_std": stats["gap_orthogonality"]["random"]["std"],
        "orthogonality_std_ratio": stats["gap_orthogonality"]["std_ratio"],
        "orthogonality_within_group_std": stats["gap_orthogonality_within_group"]["std"],
        "noise_direction_std": stats["noise_direction"]["std"],
        "sigma_calibrated": calibrated["sigma"],
        "effective_dim_x": effective_dimension(x.astype(np.float32), gamma),
        "effective_dim_y": effective_dimension(y.astype(np.float32), gamma),
        "recall_at_1": recall_at_1(x, y),
    }


# ---------------------------------------------------------------------------
# The structure of the gap: is the residual isotropic, how much of the pairwise gap is the
# global mean gap, do the modalities share their principal subspaces, does a gap
# estimated on some clusters of pairs hold on the others?


def second_moments(x, y=None, chunk: int = 32768) -> tuple:
    """(n, mean [d], covariance [d, d]) of the rows of ``x`` (or of ``x - y``), float64,
    accumulated ``chunk`` rows at a time through BLAS (host arrays, memory maps too)."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"second moments need at least 2 rows, got {n}")
    total, outer = np.zeros(d), np.zeros((d, d))
    shift = np.asarray(x[0], np.float32) - (0 if y is None else np.asarray(y[0], np.float32))
    for lo in range(0, n, chunk):
        rows = np.asarray(x[lo:lo + chunk], np.float32)
        if y is not None:
            rows = rows - np.asarray(y[lo:lo + chunk], np.float32)
        rows = rows - shift  # around one row: no cancellation when the mean is large
        total += rows.sum(0, dtype=np.float64)
        outer += rows.T @ rows
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    return n, mean + shift, cov


def residual_structure(x, y, chunk: int = 32768) -> dict:
    """The pairwise gap g_i = x_i - y_i split into the global mean gap m and the residual
    g_i - m (the alignment noise): the residual covariance's spectrum, its top-eigenvalue
    ratio (largest eigenvalue over the mean one: 1 when isotropic), its effective dimension
    (participation ratio (sum l)^2 / sum l^2, also as a fraction of d), and the share of
    the pairwise gap energy E|g|^2 that the mean gap explains, |m|^2 / E|g|^2."""
    n, m, cov = second_moments(x, y, chunk)
    spectrum = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    residual = float(spectrum.sum()) * (n - 1) / n
    participation = float(spectrum.sum() ** 2 / np.sum(spectrum ** 2))
    return {"residual_spectrum": spectrum,
            "top_eigenvalue_ratio": float(spectrum[0] / spectrum.mean()),
            "residual_effective_dim": participation,
            "residual_effective_dim_fraction": participation / len(spectrum),
            "mean_gap_energy_share": float(m @ m / (m @ m + residual))}


def residual_noise(x, y, rank: int = 0, chunk: int = 32768,
                   shrinkage: float | None = None) -> dict:
    """A Gaussian model of the alignment noise of paired embeddings (normalized here), for
    this project's c3_aniso: the covariance of the residual (x_i - y_i) - mean gap, shrunk
    toward a scaled identity, C = (1 - rho) S + rho (tr S / d) I (S the sample covariance;
    ``shrinkage`` rho, by default the Ledoit-Wolf estimate ``ledoit_wolf_shrinkage``, so
    that C stays positive definite and well-conditioned with fewer pairs than dimensions;
    0: S itself). Given as ``factor`` [d, r] (C's top ``rank`` eigenvectors times the
    square roots of their eigenvalues; every one when ``rank`` is 0 or >= d) and ``std``
    [d] (the rest of each dimension's variance, zeros at full rank), scaled so the mean
    per-dimension variance is 1: noise ``sigma * (std z + factor z')`` has covariance
    ``sigma^2 C / (tr C / d)``. ``sigma`` is the scale taken out, sqrt(tr C / d) (tr C =
    tr S), which equals ``calibrate_sigma``'s; ``shrinkage`` is the rho used."""
    x, y = (np.asarray(a, np.float64) for a in (x, y))
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    _, mean, cov = second_moments(x, y, chunk)
    d = cov.shape[0]
    rho = (ledoit_wolf_shrinkage(x - y - mean) if shrinkage is None else float(shrinkage))
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"residual_noise shrinkage={rho} must be in [0, 1]")
    unit = float(np.sqrt(np.trace(cov) / d))
    cov = (1.0 - rho) * cov + rho * unit ** 2 * np.eye(d)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    r = d if rank <= 0 else min(rank, d)
    factor = vectors[:, :r] * np.sqrt(values[:r])
    rest = (np.zeros(d) if r == d else
            np.clip(np.diag(cov) - np.sum(factor ** 2, axis=1), 0.0, None))
    return {"factor": factor / unit, "std": np.sqrt(rest) / unit, "sigma": unit,
            "num_pairs": int(x.shape[0]), "shrinkage": rho}


def ledoit_wolf_shrinkage(centered) -> float:
    """Ledoit and Wolf's (2004) shrinkage intensity toward (tr S / d) I for the rows of
    ``centered`` [n, d] (mean already removed): min(b^2, d^2) / d^2 with d^2 =
    |S - m I|_F^2 and b^2 = sum_k |x_k x_k^T - S|_F^2 / n^2, S the 1/n covariance."""
    a = np.asarray(centered, np.float64)
    n, d = a.shape
    s = a.T @ a / n
    m = np.trace(s) / d
    dist = np.sum(s ** 2) - 2 * m * np.trace(s) + d * m ** 2  # |S - m I|_F^2
    # sum_k |x_k x_k^T - S|_F^2 = sum_k |x_k|^4 - n |S|_F^2 (since sum_k x_k x_k^T = n S).
    spread = (np.sum(np.sum(a ** 2, axis=1) ** 2) - n * np.sum(s ** 2)) / n ** 2
    if dist <= 0:
        return 0.0
    return float(min(max(spread, 0.0), dist) / dist)


def covariance_eigh(x, chunk: int = 32768) -> tuple:
    """(eigenvalues descending, eigenvectors as columns) of the covariance of rows of ``x``."""
    values, vectors = np.linalg.eigh(second_moments(x, chunk=chunk)[2])
    return np.clip(values[::-1], 0.0, None), vectors[:, ::-1]


def subspace_overlap(u, v, ks) -> dict:
    """For each k: |U_k^T V_k|_F^2 / k of the leading k columns of two orthonormal bases
    (1: the same k-dimensional subspace, k/d expected by chance)."""
    return {int(k): float(np.sum((u[:, :k].T @ v[:, :k]) ** 2) / k) for k in ks}


@functools.partial(jax.jit, static_argnames=("clusters", "iterations"))
def _spherical_kmeans(points: jax.Array, rng: jax.Array, clusters: int,
                      iterations: int) -> jax.Array:
    centers = points[jax.random.choice(rng, points.shape[0], (clusters,), replace=False)]

    def step(centers, _):
        labels = jnp.argmax(points @ centers.T, axis=1)
        sums = jax.ops.segment_sum(points, labels, clusters)
        return jnp.where(jnp.linalg.norm(sums, axis=1, keepdims=True) > 0,
                         normalize(sums), centers), None

    centers = jax.lax.scan(step, centers, None, length=iterations)[0]
    return jnp.argmax(points @ centers.T, axis=1)


def gap_transfer(x, y, rng: jax.Array, clusters: int = 16, splits: int = 10,
                 max_pairs: int = 20_000, iterations: int = 20) -> dict:
    """Does a gap estimated on some pairs hold on others? Pairs (up to ``max_pairs``, drawn
    at random) are clustered by content (spherical k-means on x + y); ``splits`` times, the
    clusters are halved at random, the mean gap m_A is estimated on one half and applied
    to the other half's pairs B. Reports, mean and std over the splits: cos(m_A, m_B), the
    share of B's pairwise gap energy that subtracting m_A removes,
    1 - E|g_B - m_A|^2 / E|g_B|^2, the share its own mean gap removes, |m_B|^2 / E|g_B|^2,
    and their ratio (1: the gap transfers fully)."""
    take, split_rng, fit_rng = jax.random.split(rng, 3)
    n = x.shape[0]
    rows = np.sort(np.asarray(jax.random.choice(take, n, (min(n, max_pairs),), replace=False)))
    xs, ys = np.asarray(x[rows], np.float64), np.asarray(y[rows], np.float64)
    labels = np.asarray(_spherical_kmeans(normalize(jnp.asarray(xs + ys, jnp.float32)),
                                          fit_rng, clusters, iterations))
    g = xs - ys
    energy = lambda v: float(np.mean(np.sum(v ** 2, axis=1)))
    rows_out = []
    for key in jax.random.split(split_rng, splits):
        half = np.asarray(jax.random.permutation(key, clusters))[:clusters // 2]
        in_a = np.isin(labels, half)
        if in_a.all() or not in_a.any():
            continue
        m_a, g_b = g[in_a].mean(0), g[~in_a]
        m_b = g_b.mean(0)
        rows_out.append((float(m_a @ m_b / np.linalg.norm(m_a) / np.linalg.norm(m_b)),
                         1.0 - energy(g_b - m_a) / energy(g_b), float(m_b @ m_b) / energy(g_b)))
    values = np.asarray(rows_out)
    ratio = values[:, 1] / values[:, 2]
    stat = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v))}
    return {"clusters": clusters, "splits": len(values), "pairs": len(rows),
            "cos_estimate_held_out": stat(values[:, 0]),
            "explained_by_estimate": stat(values[:, 1]),
            "explained_by_own_mean": stat(values[:, 2]), "transfer_ratio": stat(ratio)}


# ---------------------------------------------------------------------------
# MLP dimensional collapse (Appendix I.2, Figure 13)


def mlp_collapse(rng: jax.Array, num_inputs: int = 10_000, width: int = 512, depth: int = 50,
                 every: int = 5) -> dict:
    """Figure 13: spectra of a random ReLU MLP's pre-activations at layers 0, every, ... < depth.

    N(0, 1) inputs go through ``depth`` Linear(width, width) layers (Xavier-uniform
    weights, zero bias) with a ReLU between consecutive layers. Layer k's features are
    the output of the k-th Linear before its ReLU; layer 0 is the input itself.
    Returns the covariance spectra and effective dimensions (gamma=0.99 and 0.9).
    """
    k_in, k_w = jax.random.split(rng)
    x0 = jax.random.normal(k_in, (num_inputs, width), jnp.float32)
    limit = math.sqrt(6.0 / (width + width))
    weights = jax.random.uniform(k_w, (depth, width, width), jnp.float32, -limit, limit)
    layers = list(range(0, depth, every))
    # Host LAPACK: XLA's CPU eigvalsh of a 512 x 512 matrix takes seconds.
    covs = np.asarray(_pre_activation_covariances(x0, weights, every), np.float64)
    spectra = np.maximum(np.linalg.eigvalsh(covs)[:, ::-1], 0.0)
    return {
        "layers": layers,
        "spectra": spectra,
        "effective_dim": [effective_dimension_of_spectrum(s, 0.99) for s in spectra],
        "effective_dim_gamma_0.9": [effective_dimension_of_spectrum(s, 0.9) for s in spectra],
    }


@functools.partial(jax.jit, static_argnames="every")
def _pre_activation_covariances(x0: jax.Array, weights: jax.Array, every: int) -> jax.Array:
    """Covariances of z_k, k = 0, every, ...: z_0 = x0, z_1 = W_1 x0, z_k = W_k relu(z_{k-1})."""
    d = x0.shape[1]

    def layer(z, k_w):
        k, w = k_w
        cov = jax.lax.cond(k % every == 0, _covariance, lambda z: jnp.zeros((d, d)), z)
        return jnp.where(k > 0, jax.nn.relu(z), z) @ w, cov

    _, covs = jax.lax.scan(layer, x0, (jnp.arange(weights.shape[0]), weights))
    return covs[::every]


# ---------------------------------------------------------------------------
# Lemma 2: stable region controlled by temperature (Figure 5)


def required_margin(tau, delta: float, o):
    """Margin r at which the loss bound log(1 + o exp(-r/tau)) equals ``delta`` (Lemma 2)."""
    tau, o = np.asarray(tau, np.float64), np.asarray(o, np.float64)
    return tau * np.log(o / np.expm1(delta))


def margin_loss_bound(r, tau, o):
    """Upper bound log(1 + o exp(-r/tau)) of one contrastive term at margin ``r``."""
    return np.log1p(np.asarray(o, np.float64) * np.exp(-np.asarray(r, np.float64) / tau))


# ---------------------------------------------------------------------------
# Gap-distance sensitivity (Appendix G, Table 6)


def orthogonal_shift(e, norm: float, rng: jax.Array, gamma: float = 0.99) -> np.ndarray:
    """A constant vector c, |c| = ``norm``, orthogonal to the (effective) span of ``e``.

    The span is that of the leading right-singular vectors of ``e`` holding ``gamma``
    of its singular-value sum (all non-zero ones when gamma=1).
    """
    e = np.asarray(e, np.float64)
    _, s, vt = np.linalg.svd(e, full_matrices=True)
    k = effective_dimension_of_spectrum(s, gamma) if gamma < 1 else int((s > s[0] * 1e-10).sum())
    if k >= e.shape[1]:
        raise ValueError(f"embeddings span all {e.shape[1]} dimensions at gamma={gamma}; "
                         "no orthogonal direction exists (lower gamma)")
    complement = vt[k:]
    coeffs = np.asarray(jax.random.normal(rng, (complement.shape[0],)), np.float64)
    c = coeffs @ complement
    return norm * c / np.linalg.norm(c)


def shift(e: jax.Array, c: jax.Array) -> jax.Array:
    """Applies a constant gap c to every embedding: e + c."""
    return e + c


# ---------------------------------------------------------------------------
# Synthetic contrastive optimization (Section 3.1, Figure 4)


def synthetic_embeddings(rng: jax.Array, num_pairs: int = 500, dim: int = 512, d_x: int = 25,
                         d_y: int = 230, normalized: bool = True):
    """Image/text embeddings with orthogonal effective dims and constants elsewhere.

    Image rows are N(0, 1) in dims [0, d_x), text rows in [d_x, d_x + d_y); every
    other dimension holds a per-modality constant drawn from N(0, 1). The rows are
    unit-normalized unless ``normalized`` is False (the same draws, raw).
    """
    if d_x + d_y > dim:
        raise ValueError(f"d_x + d_y = {d_x + d_y} exceeds dim = {dim}")
    kx, ky, kcx, kcy = jax.random.split(rng, 4)
    x = jnp.broadcast_to(jax.random.normal(kcx, (dim,)), (num_pairs, dim))
    y = jnp.broadcast_to(jax.random.normal(kcy, (dim,)), (num_pairs, dim))
    x = x.at[:, :d_x].set(jax.random.normal(kx, (num_pairs, d_x)))
    y = y.at[:, d_x:d_x + d_y].set(jax.random.normal(ky, (num_pairs, d_y)))
    return (normalize(x), normalize(y)) if normalized else (x, y)


def contrastive_loss(x: jax.Array, y: jax.Array, tau: float) -> jax.Array:
    """Symmetric InfoNCE over matched rows of normalized ``x`` and ``y`` (Lemma 1)."""
    logits = (x @ y.T) / tau
    diag = jnp.diagonal(logits)
    row = jax.nn.logsumexp(logits, axis=1) - diag
    col = jax.nn.logsumexp(logits, axis=0) - diag
    return 0.5 * (row.mean() + col.mean())


@functools.partial(jax.jit, static_argnames=("steps", "tau", "lr", "normalize_in_loss"),
                   donate_argnums=0)
def contrastive_sgd_chunk(params, steps: int, tau: float, lr: float,
                          normalize_in_loss: bool = False):
    """``steps`` plain-SGD steps on the embeddings themselves.

    By default the loss is Lemma 1's, on the embeddings as they are (unit-normalized
    once, before optimization, as Section 3.1 describes); ``normalize_in_loss``
    instead normalizes inside the loss, the way a CLIP head does (and the reference
    notebook, whose rows start raw).
    """
    prep = normalize if normalize_in_loss else (lambda e: e)
    loss_fn = lambda p: contrastive_loss(prep(p[0]), prep(p[1]), tau)

    def step(p, _):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        return jax.tree.map(lambda a, g: a - lr * g, p, grads), loss

    return jax.lax.scan(step, params, None, length=steps)


def gap_report(x, y, ineffective: slice) -> dict:
    """Modality gap of normalized embeddings, over all dims and over ``ineffective`` dims."""
    x, y = normalize(jnp.asarray(x)), normalize(jnp.asarray(y))
    diff = x.mean(0) - y.mean(0)
    return {"gap": float(jnp.linalg.norm(diff)),
            "gap_ineffective": float(jnp.linalg.norm(diff[ineffective]))}
