"""Steps/s of the Section 3.1 synthetic contrastive run: our jitted lax.scan vs PyTorch.

The PyTorch side optimizes the embeddings the way a PyTorch user writes it:
nn.Parameter of shape [n, d], symmetric cross-entropy at tau (F.normalize inside the
loss with --normalize_in_loss), torch.optim.SGD, one Python iteration per step.
Both run the same problem, float32, same machine, in this one process; warm-up excluded.
Prints one JSON line: {"name", "reference_name", "ours", "reference", "unit", "ratio", ...}.
``--smoke``: 32 pairs, 4 steps in chunks of 2, through the same code (seconds; the test suite
runs it).
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax import geometry
from c3_jax.timing import matmul_peak_flops

# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(steps=4, chunk=2, num_pairs=32, reference_warmup=2)


def ours(x, y, steps, chunk, tau, lr, norm):
    params = (jnp.array(x, copy=True), jnp.array(y, copy=True))  # the step donates them
    params, _ = geometry.contrastive_sgd_chunk(params, chunk, tau, lr, norm)  # compile, warm up
    jax.block_until_ready(params)
    start = time.perf_counter()
    for _ in range(steps // chunk):
        params, losses = geometry.contrastive_sgd_chunk(params, chunk, tau, lr, norm)
    jax.block_until_ready(losses)
    return steps / (time.perf_counter() - start)


def reference(x, y, steps, tau, lr, norm, warmup):
    import torch
    import torch.nn.functional as F

    xt = torch.nn.Parameter(torch.tensor(np.asarray(x)))
    yt = torch.nn.Parameter(torch.tensor(np.asarray(y)))
    opt = torch.optim.SGD([xt, yt], lr=lr)
    labels = torch.arange(x.shape[0])
    prep = (lambda e: F.normalize(e, dim=-1)) if norm else (lambda e: e)

    def step():
        logits = prep(xt) @ prep(yt).T / tau
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    return steps / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--num_pairs", type=int, default=500)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--normalize_in_loss", action="store_true")
    p.add_argument("--reference_warmup", type=int, default=20, help="PyTorch's untimed steps")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    norm = args.normalize_in_loss
    x, y = geometry.synthetic_embeddings(jax.random.PRNGKey(0), args.num_pairs, args.dim)
    ours_sps = ours(x, y, args.steps, args.chunk, 0.07, 0.1, norm)
    ref_sps = reference(x, y, args.steps, 0.07, 0.1, norm, args.reference_warmup)
    flop_per_step = 6 * args.num_pairs ** 2 * args.dim
    print(json.dumps({
        "name": "synthetic_contrastive_sgd_jax_scan", "reference_name": "pytorch_sgd_loop",
        "ours": ours_sps, "reference": ref_sps, "unit": "steps/s", "ratio": ours_sps / ref_sps,
        "ours_gflops": ours_sps * flop_per_step / 1e9,
        "reference_gflops": ref_sps * flop_per_step / 1e9,
        "matmul_peak_gflops": matmul_peak_flops(256 if args.smoke else 2048) / 1e9,
        "steps": args.steps, "num_pairs": args.num_pairs, "dim": args.dim, "smoke": args.smoke,
        "normalize_in_loss": norm, "device": jax.devices()[0].device_kind,
    }))


if __name__ == "__main__":
    main()
