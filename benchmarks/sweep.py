"""A sweep of N captioners as one vmapped program vs the same N trained one after another.

Both sides train the same N members (C^3 variants c1, c2_collapse, c2_corrupt, c3,
span_only and 'supervised' (c1), cycled, seeds 0, 1, ...) for --steps steps on the same
random batches (embeddings, caption ids with padding), from the same initial params:
  * sequential (one run per captioner): per member, the trainer's path for a run of one
    captioner, a sweep of one member (its own jit, hence its own compilation), its init,
    its steps;
  * sweep: ``caption_sweep.member_step`` over the N members (one compilation),
    ``caption_sweep.stacked_init``, the same steps for all members at once: the members
    one after another in the program (``lax.map``) where the trainer does so
    (``caption_sweep.members_in_turn``: on CPU), and once more vmapped (the members at
    once, the trainer's way on accelerators) for comparison.
Sizes: 'world' (the built-in world's captioner: width 64, depth 2, 4-token prefix, its
vocabulary and caption length, batch 64) or 'gpt2_small' (GPT-2 small from scratch, 512-d
embeddings, 10-token prefix, 20 caption tokens, batch 8). Wall time includes compilation
(what a researcher waits for); steady captions/s excludes the first step of each program.
The two sides run one after the other in one process (persistent compilation cache off),
then the sweep once more (``--sweep_runs``), so a slow spell of the shared machine shows as
a spread. Prints a table, then per N two JSON lines (wall and steady rate; ``ours`` the
first sweep run, every run listed), with the matmul peak of this run and the load average.
``--smoke``: the 'tiny' size (width 16, one block), N = 2, 3 steps, one sweep run, through
the same code (seconds; the test suite runs it, with the compilation cache it is given).
"""
import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from c3_jax import c3
from c3_jax.timing import matmul_peak_flops
from c3_jax.train import caption_sweep, captioning
from c3_jax.experiments.caption import default_config as caption_defaults

SIZES = {  # width, depth, heads, vocab, prefix, caption tokens, embedding dim, batch
    "world": (64, 2, 4, 40, 4, 16, 64, 64),
    "gpt2_small": (768, 12, 12, 50257, 10, 20, 512, 8),
    "tiny": (16, 1, 2, 20, 2, 4, 8, 4),  # --smoke
}
# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(size="tiny", members="2", steps=3, sweep_runs=1)
CYCLE = [("c1", "text_embedding"), ("c2_collapse", "text_embedding"),
         ("c2_corrupt", "text_embedding"), ("c3", "text_embedding"),
         ("span_only", "text_embedding"), ("c1", "image_embedding")]


def setup(size: str, directory: str):
    width, depth, heads, vocab, prefix, tokens, dim, batch = SIZES[size]
    gpt_dir = os.path.join(directory, "gpt2")
    os.makedirs(gpt_dir)
    with open(os.path.join(gpt_dir, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": vocab, "n_positions": prefix + tokens + 8,
                   "n_embd": width, "n_layer": depth, "n_head": heads,
                   "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}, f)
    c = caption_defaults("caption")
    c.update(dict(captioner=dict(gpt2=gpt_dir, gpt2_from_scratch=True, prefix_length=prefix,
                                 batch_size=batch, lr=1e-3, warmup_steps=10),
                  data=dict(max_caption_tokens=tokens)))
    return c, tokens, dim, vocab


def batches(steps: int, batch: int, tokens: int, dim: int, vocab: int) -> list:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        lengths = rng.integers(tokens // 2, tokens + 1, size=batch)
        mask = (np.arange(tokens)[None] < lengths[:, None]).astype(np.int32)
        out.append({"embedding": rng.normal(size=(batch, dim)).astype(np.float32),
                    "ids": rng.integers(1, vocab, (batch, tokens)).astype(np.int32) * mask,
                    "mask": mask})
    return out


def settings(n: int, dim: int) -> list:
    rng = np.random.default_rng(1)
    moments = {f: c3.Moments(rng.normal(size=dim).astype(np.float32) * 0.3,
                             np.full(dim, 0.1, np.float32))
               for f in ("text_embedding", "image_embedding")}
    return [c3.member_settings(v, c3.CLIP_SIGMA, moments[f], moments["image_embedding"])
            for v, f in (CYCLE[i % len(CYCLE)] for i in range(n))]


def sequential(config, n: int, data: list, dim: int) -> tuple:
    """Each member as its own run, a sweep of one: its own jit and compilation."""
    start, steady = time.perf_counter(), 0.0
    for i, s in enumerate(settings(n, dim)):
        model, _ = captioning.build_module(config)
        tx = captioning.make_optimizer(config, len(data))
        seeds = np.asarray([i], np.uint32)
        state = jax.jit(caption_sweep.stacked_init(model, tx, dim))(seeds, None)
        step = jax.jit(caption_sweep.member_step(
            model, tx, in_turn=caption_sweep.members_in_turn()), donate_argnums=0)
        one = caption_sweep.stack_settings([s])
        for j, b in enumerate(data):
            b = {k: v[None] for k, v in b.items()}
            t = time.perf_counter()
            state, metrics = step(state, b, one, seeds)
            jax.block_until_ready(metrics)
            steady += 0 if j == 0 else time.perf_counter() - t
    return time.perf_counter() - start, steady


def sweep(config, n: int, data: list, dim: int, in_turn: bool) -> tuple:
    """All members in one program: one after another (``in_turn``) or vmapped."""
    start = time.perf_counter()
    model, _ = captioning.build_module(config)
    tx = captioning.make_optimizer(config, len(data))
    state = jax.jit(caption_sweep.stacked_init(model, tx, dim))(np.arange(n, dtype=np.uint32),
                                                                 None)
    stacked = caption_sweep.stack_settings(settings(n, dim))
    step = jax.jit(caption_sweep.member_step(model, tx, in_turn=in_turn), donate_argnums=0)
    seeds, steady = np.arange(n, dtype=np.uint32), 0.0
    for j, b in enumerate(data):
        b = {k: np.broadcast_to(v, (n,) + v.shape) for k, v in b.items()}
        t = time.perf_counter()
        state, metrics = step(state, b, stacked, seeds)
        jax.block_until_ready(metrics)
        steady += 0 if j == 0 else time.perf_counter() - t
    return time.perf_counter() - start, steady


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="world")
    parser.add_argument("--members", default="6,18")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sweep_runs", type=int, default=2,
                        help="times the sweep runs (after the sequential side; the spread "
                             "shows slow spells)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    else:  # every program compiles here, as in a fresh run
        jax.config.update("jax_enable_compilation_cache", False)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step compiles, then timed ones)")
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        config, tokens, dim, vocab = setup(args.size, d)
        data = batches(args.steps, config.captioner.batch_size, tokens, dim, vocab)
        for n in [int(v) for v in args.members.split(",")]:
            captions = n * config.captioner.batch_size * args.steps
            seq_wall, seq_steady = sequential(config, n, data, dim)
            in_turn = caption_sweep.members_in_turn()
            runs = [sweep(config, n, data, dim, in_turn)
                    for _ in range(max(args.sweep_runs, 1))]
            vmapped = sweep(config, n, data, dim, False)
            per = lambda steady: n * config.captioner.batch_size * (args.steps - 1) / steady
            rows.append({"members": n, "steps": args.steps, "captions": captions,
                         "members_in_turn": in_turn, "vmapped_wall_s": vmapped[0],
                         "vmapped_steady_captions_per_s": per(vmapped[1]),
                         "sequential_wall_s": seq_wall, "sweep_wall_s": [w for w, _ in runs],
                         "sequential_steady_captions_per_s": per(seq_steady),
                         "sweep_steady_captions_per_s": [per(st) for _, st in runs],
                         "wall_ratio": [seq_wall / w for w, _ in runs],
                         "steady_ratio": [seq_steady / st for _, st in runs]})
            r = rows[-1]
            each = lambda key, fmt: " / ".join(format(v, fmt) for v in r[key])
            print(f"N={n:3d} {args.size}: sequential {seq_wall:6.1f} s "
                  f"({r['sequential_steady_captions_per_s']:8.0f} captions/s steady) | sweep "
                  f"{each('sweep_wall_s', '6.1f')} s "
                  f"({each('sweep_steady_captions_per_s', '8.0f')} captions/s) | wall "
                  f"{each('wall_ratio', '.1f')}x, steady {each('steady_ratio', '.2f')}x | "
                  f"vmapped {vmapped[0]:6.1f} s ({r['vmapped_steady_captions_per_s']:8.0f} "
                  "captions/s)", flush=True)
    common = {"size": args.size, "matmul_peak_gflops": peak / 1e9, "smoke": args.smoke,
              "load_average_1min": os.getloadavg()[0], "devices": str(jax.devices())}
    for r in rows:
        walls = [r["captions"] / w for w in r["sweep_wall_s"]]
        print(json.dumps({
            "name": "caption_sweep_wall", "reference_name": "sequential_runs_wall",
            "ours": walls[0], "reference": r["captions"] / r["sequential_wall_s"],
            "unit": "captions/s (wall, with compilation)",
            "ratio": walls[0] / (r["captions"] / r["sequential_wall_s"]),
            "ours_runs": walls, **r, **common}))
        steady = r["sweep_steady_captions_per_s"]
        print(json.dumps({
            "name": "caption_sweep_steady", "reference_name": "sequential_runs_steady",
            "ours": steady[0], "reference": r["sequential_steady_captions_per_s"],
            "unit": "captions/s (steady, first step of each program excluded)",
            "ratio": steady[0] / r["sequential_steady_captions_per_s"],
            "ours_runs": steady, **r, **common}))


if __name__ == "__main__":
    main()
