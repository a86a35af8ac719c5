"""DeCap's inference-time projection at COCO's size: images/s and peak memory of ours
(``c3.project_to_memory``: jitted, the memory read ``--chunk`` rows at a time with a
running log-sum-exp) against the PyTorch way (the whole [batch, memory] similarity
matrix, ``softmax(sim / T) @ memory``, as DeCap's inference does), on the same random
unit vectors: ``--memory`` caption embeddings (566,747: COCO Karpathy train captions),
``--queries`` image embeddings in batches of ``--batch``, 512-d, float32.

The sides are timed in turn (``--rounds`` passes over the queries each, median pass), after
a warm-up pass; the projections must agree to 1e-4. Prints one JSON line with the matmul
peak of the same run (each pass does 2 matmuls of 2 * queries * memory * d FLOPs).
``--smoke``: a memory of 1,000 rows, 8 queries, through the same code (seconds; the test
suite runs it).
"""
import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax import c3
from c3_jax.timing import matmul_peak_flops

# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(memory=1000, queries=8, batch=4, dim=16, chunk=256, rounds=1)


def _unit(rng, n, d):
    a = rng.standard_normal((n, d), dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", type=int, default=566_747)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--temperature", type=float, default=c3.DECAP_TEMPERATURE)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    import torch

    rng = np.random.default_rng(0)
    memory, queries = _unit(rng, args.memory, args.dim), _unit(rng, args.queries, args.dim)
    batches = [queries[i:i + args.batch] for i in range(0, len(queries), args.batch)]
    memory_jax = jnp.asarray(memory)
    memory_torch = torch.from_numpy(memory)
    ours_fn = jax.jit(lambda e, m: c3.project_to_memory(e, m, args.temperature, args.chunk))

    def ours():
        return np.concatenate([np.asarray(ours_fn(jnp.asarray(b), memory_jax)) for b in batches])

    def theirs():
        out = []
        with torch.no_grad():
            for b in batches:
                sim = torch.from_numpy(b) @ memory_torch.T
                out.append((torch.softmax(sim / args.temperature, dim=-1) @ memory_torch).numpy())
        return np.concatenate(out)

    got, want = ours(), theirs()  # warm-up, and the agreement check
    difference = float(np.abs(got - want).max())
    if difference > 1e-4:
        raise SystemExit(f"the projections differ by {difference}")
    times = {"ours": [], "torch": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("torch", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    flops = 2 * 2 * args.queries * args.memory * args.dim
    rate = {k: args.queries / float(np.median(v)) for k, v in times.items()}
    print(json.dumps({
        "name": "decap_projection_chunked_jit", "reference_name": "torch_whole_similarity_softmax",
        "ours": rate["ours"], "reference": rate["torch"], "unit": "images/s",
        "ratio": rate["ours"] / rate["torch"],
        "memory": args.memory, "queries": args.queries, "batch": args.batch, "dim": args.dim,
        "chunk": args.chunk, "rounds": args.rounds, "smoke": args.smoke,
        "ours_fraction_of_matmul_peak": round(flops * rate["ours"] / args.queries / peak, 3),
        "torch_fraction_of_matmul_peak": round(flops * rate["torch"] / args.queries / peak, 3),
        "matmul_peak_gflops": round(peak / 1e9, 1), "max_abs_difference": difference,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
        "similarity_matrix_gb_per_batch_torch": round(args.batch * args.memory * 4 / 2 ** 30, 2),
        "load_average": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
