"""Statistics over seeds: the mean with the sample standard deviation, and the paired
difference of two variants with its t-interval (seeds pair when they share data order)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function for integer ``df`` (the finite series of Abramowitz
    and Stegun 26.7.3-4 for A(t|df) = P(|T| < t), in float64)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        a = 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    else:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    ``t_cdf``, to 1e-10)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1; got p={p}, df={df}")
    lo, hi = -1e4, 1e4
    while hi - lo > 1e-10 * max(1.0, abs(lo)):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof = 1; None, undefined, for fewer than two
    values) of the finite values, with the values themselves."""
    v = np.asarray(values, np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if ok.size else None,
            "std": float(ok.std(ddof=1)) if ok.size > 1 else None,
            "per_seed": v.tolist()}


def mean_pm_std(row: dict, scale: float = 100.0) -> str:
    """'mean ± std' of a ``mean_std`` row times ``scale`` (the mean alone where the std is
    undefined)."""
    if row["mean"] is None:
        return "n/a"
    if row["std"] is None:
        return f"{scale * row['mean']:.1f}"
    return f"{scale * row['mean']:.1f} ± {scale * row['std']:.1f}"


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """The mean of the paired differences a_i - b_i, their sample std, and the two-sided
    t-interval at ``level`` (None where undefined: fewer than two pairs, or NaN among
    them)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(a) != len(b):
        raise ValueError(f"paired_interval needs two equal-length lists; got {len(a)} and "
                         f"{len(b)}")
    n = int(d.size)
    mean = float(d.mean()) if n and np.isfinite(d).all() else None
    if n < 2 or mean is None:
        return {"mean": mean, "std": None, "low": None, "high": None, "n": n, "level": level}
    std = float(d.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": n,
            "level": level}


def verdict(interval: dict) -> str:
    """What an interval of a - b allows one to say: 'a > b', 'a < b' or 'not established'."""
    if interval["low"] is None or interval["high"] is None:
        return "not established"
    if interval["low"] > 0:
        return "a > b"
    if interval["high"] < 0:
        return "a < b"
    return "not established"
