"""Writes a large .npz of paired embeddings with a planted gap and alignment noise.

  python benchmarks/make_pairs.py --num_pairs=600000 --dim=1024 --out=runs/pairs.npz

Text rows live in a span of ``--span`` dims; image = text + c + N(0, sigma^2 I) with c
orthogonal to the span, so Table 1 and the calibrated sigma have known answers.
"""
import argparse
import os

import numpy as np


def make_pairs(num_pairs: int, dim: int, span: int, gap: float, sigma: float, seed: int = 0,
               chunk: int = 50_000):
    rng = np.random.default_rng(seed)
    c = np.zeros(dim, np.float32)
    c[span:] = rng.normal(size=dim - span)
    c *= gap / np.linalg.norm(c)
    x = np.empty((num_pairs, dim), np.float32)
    y = np.zeros((num_pairs, dim), np.float32)
    for s in range(0, num_pairs, chunk):
        e = slice(s, min(s + chunk, num_pairs))
        n = e.stop - e.start
        y[e, :span] = rng.standard_normal((n, span), np.float32) / np.sqrt(span)
        x[e] = y[e] + c + sigma * rng.standard_normal((n, dim), np.float32)
    return x, y


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num_pairs", type=int, default=600_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--span", type=int, default=400)
    p.add_argument("--gap", type=float, default=0.8)
    p.add_argument("--sigma", type=float, default=0.01)
    p.add_argument("--out", default="runs/pairs.npz")
    a = p.parse_args()
    x, y = make_pairs(a.num_pairs, a.dim, a.span, a.gap, a.sigma)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez(a.out, x=x, y=y)
    print(f"wrote {a.out}: x, y of shape {x.shape}")


if __name__ == "__main__":
    main()
