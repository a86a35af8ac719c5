"""The measured matmul peak of a device: the yardstick that benchmarks and the synthetic
geometry run quote their throughput against."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 FLOP/s of an n x n matmul on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = mm(a)
    out.block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)
