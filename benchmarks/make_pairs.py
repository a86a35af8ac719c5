"""Writes a large .npz of paired embeddings with a planted gap and alignment noise, and
times its generator against the plain numpy way.

  python benchmarks/make_pairs.py --num_pairs=600000 --dim=1024 --out=runs/pairs.npz

Text rows live in a span of ``--span`` dims; image = text + c + N(0, sigma^2 I) with c
orthogonal to the span, so Table 1 and the calibrated sigma have known answers.

The comparison (on ``--compare_pairs`` pairs, both sides in this process, one after the
other): ours (``make_pairs``: float32 draws, ``--chunk`` rows at a time, into preallocated
arrays) against pairs of the same planted distribution drawn the plain numpy way (whole
float64 arrays, then cast to float32; other draws, so other values), in pairs/s, with each
side's peak traced memory (tracemalloc, which numpy's allocations report to). Prints one
JSON line. ``--smoke``: 64 pairs of 32 dims into a temporary directory, through the same
code (seconds; the test suite runs it).
"""
import argparse
import json
import os
import shutil
import tempfile
import time
import tracemalloc

import numpy as np

# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(num_pairs=64, dim=32, span=8, compare_pairs=64, chunk=16)


def planted_gap(rng: np.random.Generator, dim: int, span: int, gap: float) -> np.ndarray:
    """The gap vector c: random outside the text span, of length ``gap``."""
    c = np.zeros(dim, np.float32)
    c[span:] = rng.normal(size=dim - span)
    return c * (gap / np.linalg.norm(c))


def make_pairs(num_pairs: int, dim: int, span: int, gap: float, sigma: float, seed: int = 0,
               chunk: int = 50_000):
    rng = np.random.default_rng(seed)
    c = planted_gap(rng, dim, span, gap)
    x = np.empty((num_pairs, dim), np.float32)
    y = np.zeros((num_pairs, dim), np.float32)
    for s in range(0, num_pairs, chunk):
        e = slice(s, min(s + chunk, num_pairs))
        n = e.stop - e.start
        y[e, :span] = rng.standard_normal((n, span), np.float32) / np.sqrt(span)
        x[e] = y[e] + c + sigma * rng.standard_normal((n, dim), np.float32)
    return x, y


def plain_pairs(num_pairs: int, dim: int, span: int, gap: float, sigma: float, seed: int = 0):
    """The reference: pairs of the same planted distribution drawn whole in float64, then
    cast."""
    rng = np.random.default_rng(seed)
    c = planted_gap(rng, dim, span, gap)
    y = np.zeros((num_pairs, dim))
    y[:, :span] = rng.standard_normal((num_pairs, span)) / np.sqrt(span)
    x = y + c + sigma * rng.standard_normal((num_pairs, dim))
    return x.astype(np.float32), y.astype(np.float32)


def timed(fn) -> tuple:
    """(seconds, peak traced MB) of one call of ``fn``."""
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_pairs", type=int, default=600_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--span", type=int, default=400)
    p.add_argument("--gap", type=float, default=0.8)
    p.add_argument("--sigma", type=float, default=0.01)
    p.add_argument("--chunk", type=int, default=50_000)
    p.add_argument("--compare_pairs", type=int, default=50_000,
                   help="pairs per side in the timed comparison")
    p.add_argument("--out", default=None,
                   help="the .npz to write (default runs/pairs.npz; --smoke: a temporary file; "
                        "'' writes nothing)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    a = p.parse_args()
    if a.smoke:
        vars(a).update(SMOKE)
    temporary = tempfile.mkdtemp(prefix="make_pairs_") if a.smoke and a.out is None else None
    out = a.out if a.out is not None else (
        os.path.join(temporary, "pairs.npz") if temporary else "runs/pairs.npz")
    shape = (a.compare_pairs, a.dim, a.span, a.gap, a.sigma)
    ours_s, ours_mb = timed(lambda: make_pairs(*shape, chunk=a.chunk))
    ref_s, ref_mb = timed(lambda: plain_pairs(*shape))
    if out:
        x, y = make_pairs(a.num_pairs, a.dim, a.span, a.gap, a.sigma, chunk=a.chunk)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.savez(out, x=x, y=y)
        print(f"wrote {out}: x, y of shape {x.shape}")
    if temporary:
        shutil.rmtree(temporary)
    print(json.dumps({
        "name": "make_pairs_chunked_float32", "reference_name": "numpy_float64_whole_then_cast",
        "ours": a.compare_pairs / ours_s, "reference": a.compare_pairs / ref_s,
        "unit": "pairs/s", "ratio": ref_s / ours_s, "ours_peak_traced_mb": ours_mb,
        "reference_peak_traced_mb": ref_mb, "compare_pairs": a.compare_pairs, "dim": a.dim,
        "span": a.span, "chunk": a.chunk, "num_pairs": a.num_pairs, "smoke": a.smoke,
        "load_average_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
