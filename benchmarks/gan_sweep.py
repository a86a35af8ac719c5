"""A sweep of N text-to-image generators as one program vs the same N trained one after another.

Both sides train the same N members (C^3 variants c1, c2_collapse, c2_corrupt, c3, cycled;
seeds 0, 1, ...) for --steps G+D steps (lazy R1 every ``r1_every`` steps) on the same random
batches, from the same initial parameters, at the sizes of ``t2i_train.py``'s preset
(default: shapes_t2i's generator, discriminator and world CLIP image tower, batch 8):
  * sequential (one run per generator): per member, ``generation.make_train_step`` (its own
    jit, hence its own two compilations: with and without R1), its init, its steps;
  * sweep: ``gan_sweep.member_step`` over the N stacked members (the members one after
    another inside one compiled program, ``gan_sweep.over_members``), one pair of
    compilations.
Wall time includes compilation (what a researcher waits for); "steady" is images/s over the
steps after each program's first two (the two compilations). The two sides run one after
the other in one process (persistent compilation cache off), then the sweep once more, so a
slow spell of the shared machine shows as a spread. The sides' final losses are compared
(they train the same members). Prints a table and one JSON line (with the matmul peak of
this run and the load average).
"""
import argparse
import json
import os
import platform
import sys
import time
import types

import jax
import numpy as np

from c3_jax import c3, parallel
from c3_jax.models import stylegan2
from c3_jax.timing import matmul_peak_flops
from c3_jax.train import gan_sweep, generation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # t2i_train, its presets
import t2i_train  # noqa: E402
from configs import t2i_base  # noqa: E402  (on the path t2i_train set)

VARIANTS = ("c1", "c2_collapse", "c2_corrupt", "c3")
LOSSES = ("g_adv", "d_adv")


def setup(preset_name: str):
    preset = t2i_train.PRESETS[preset_name]()
    gan = preset["gan"]
    config = t2i_base.get_config()
    config.lr = preset["lr"]
    tx = generation.optimizer(config)
    return types.SimpleNamespace(  # what gan_sweep.member_step reads of a GanSweep
        gan=gan, gen=stylegan2.Generator(gan), disc=stylegan2.Discriminator(gan),
        encoder=t2i_train.make_encoder(preset["clip"], preset_name), tx=tx, g_tx=tx, d_tx=tx,
        cfg=generation.StepConfig(**preset["step"]))


def members(n: int, cond_dim: int) -> tuple:
    """[(variant, seed)] and each member's settings (random embedding moments)."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=(1024, cond_dim)) + 2.0 * rng.normal(size=cond_dim)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    moments = c3.Moments(unit.mean(0).astype(np.float32), np.ones(cond_dim, np.float32))
    chosen = [(VARIANTS[i % len(VARIANTS)], i) for i in range(n)]
    return chosen, [c3.member_settings(v, c3.CLIP_SIGMA, moments, moments) for v, _ in chosen]


def batches(steps: int, batch: int, gan) -> list:
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (batch, gan.resolution, gan.resolution, 3),
                                   dtype=np.uint8),
             "embedding": rng.normal(size=(batch, gan.cond_dim)).astype(np.float32)}
            for _ in range(steps)]


def _timed(run_step, steps: int) -> tuple:
    """Runs ``run_step(i)`` (-> metrics) for every step; returns the seconds of the steps
    after the first two (the ones that compile: step 0 with R1, step 1 without) and the
    losses of every step, [steps, len(LOSSES), members]."""
    marks, losses = [], []
    for i in range(steps):
        metrics = jax.device_get(run_step(i))
        marks.append(time.perf_counter())
        losses.append([np.atleast_1d(metrics[k]) for k in LOSSES])
    return marks[-1] - marks[1], np.asarray(losses, np.float64)


def sequential(s, chosen, settings, data) -> tuple:
    """Each member as its own run's step: its own jit and compilations."""
    mesh = parallel.make_mesh(1)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    put = parallel.batch_sharding(mesh)
    wall, steady, losses = 0.0, 0.0, []
    for (_, seed), setting in zip(chosen, settings):
        init = lambda: generation.init_state(s.gen, s.disc, s.tx, s.gan, jax.random.key(seed))
        shardings = parallel.state_shardings(mesh, jax.eval_shape(init))
        start = time.perf_counter()
        state = jax.jit(init, out_shardings=shardings)()
        step_fn = generation.make_train_step(s.gen, s.disc, s.encoder, s.cfg, s.tx, s.tx, mesh,
                                             shardings)
        setting = jax.device_put(setting, repl)
        key = jax.random.key(seed)
        box = [state]

        def one(i):
            box[0], metrics = step_fn(box[0], jax.device_put(data[i], put), setting, key,
                                      i % s.cfg.r1_every == 0)
            return metrics
        seconds, member_losses = _timed(one, len(data))
        wall += time.perf_counter() - start
        steady += seconds
        losses.append(member_losses)
    return wall, steady, np.concatenate(losses, axis=2)


def sweep(s, chosen, settings, data) -> tuple:
    """The N members stacked, trained by gan_sweep's one compiled step."""
    n = len(chosen)
    mesh = parallel.member_mesh(n, split_batch=False)
    s.mesh = mesh
    seeds_host = np.asarray([seed for _, seed in chosen], np.uint32)
    stacked = {k: np.stack([m[k] for m in settings]) for k in settings[0]}
    start = time.perf_counter()
    seeds, stacked = parallel.put_members(mesh, (seeds_host, stacked))
    init = jax.vmap(lambda k: generation.init_state(s.gen, s.disc, s.tx, s.gan,
                                                    jax.random.key(k)))
    shardings = parallel.member_shardings(mesh, jax.eval_shape(init, seeds))
    state = jax.jit(init, out_shardings=shardings)(seeds)
    step_fn = jax.jit(gan_sweep.member_step(s, s.cfg, False), static_argnums=4,
                      donate_argnums=0, out_shardings=(shardings, None))
    put = parallel.member_batch_sharding(mesh)
    box = [state]

    def one(i):  # every member gets the step's batch
        batch = jax.tree.map(lambda a: parallel.put_whole(np.broadcast_to(a, (n,) + a.shape), put),
                             data[i])
        box[0], metrics = step_fn(box[0], batch, stacked, seeds, i % s.cfg.r1_every == 0)
        return metrics
    steady, losses = _timed(one, len(data))
    return time.perf_counter() - start, steady, losses


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(t2i_train.PRESETS), default="shapes_t2i")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=None,
                   help="steps per member (default: 2 * r1_every, two lazy-R1 cycles)")
    args = p.parse_args()
    if args.members < 1:
        raise SystemExit("--members must be >= 1")
    jax.config.update("jax_enable_compilation_cache", False)
    s = setup(args.preset)
    steps = args.steps or 2 * s.cfg.r1_every
    if steps < 3:
        raise SystemExit("--steps must be >= 3 (two compiling steps, then timed ones)")
    chosen, settings = members(args.members, s.gan.cond_dim)
    data = batches(steps, s.cfg.batch_size, s.gan)
    images = args.members * s.cfg.batch_size
    print(f"preset {args.preset}: {args.members} members x {steps} steps, batch "
          f"{s.cfg.batch_size}, R1 every {s.cfg.r1_every}", flush=True)
    seq_wall, seq_steady, seq_losses = sequential(s, chosen, settings, data)
    print(f"sequential: {seq_wall:.1f} s wall", flush=True)
    runs = [sweep(s, chosen, settings, data) for _ in range(2)]
    for i, (wall, _, _) in enumerate(runs):
        print(f"sweep run {i + 1}: {wall:.1f} s wall", flush=True)
    # Per step, the largest relative difference of a member's losses between the sides.
    diff = (np.abs(runs[0][2] - seq_losses) / np.abs(seq_losses)).max(axis=(1, 2))
    steady_images = images * (steps - 2)
    seq_rate = steady_images / seq_steady
    rates = [steady_images / st for _, st, _ in runs]
    peak = matmul_peak_flops()
    print("| N | sequential wall | sweep wall (2 runs) | wall ratio | sequential steady | "
          "sweep steady | steady ratio | matmul peak |")
    print(f"| {args.members} | {seq_wall:.1f} s | {runs[0][0]:.1f} / {runs[1][0]:.1f} s | "
          f"{seq_wall / runs[0][0]:.2f}x / {seq_wall / runs[1][0]:.2f}x | "
          f"{seq_rate:.0f} images/s | {rates[0]:.0f} / {rates[1]:.0f} images/s | "
          f"{rates[0] / seq_rate:.2f}x / {rates[1] / seq_rate:.2f}x | {peak / 1e9:.0f} GFLOP/s |")
    agree = int(np.argmax(diff > 1e-4)) if (diff > 1e-4).any() else steps
    print(f"losses, sweep vs sequential: max relative difference {diff[:3].max():.1e} over the "
          f"first 3 steps, {diff.max():.1e} over all {steps}; within 1e-4 for the first "
          f"{agree} steps")
    print(json.dumps({
        "name": "gan_sweep", "unit": "s (wall, with compilation)", "preset": args.preset,
        "members": args.members, "steps": steps, "batch": s.cfg.batch_size,
        "r1_every": s.cfg.r1_every, "sequential_wall_s": seq_wall,
        "sweep_wall_s": [r[0] for r in runs], "wall_ratio": [seq_wall / r[0] for r in runs],
        "sequential_steady_images_s": seq_rate, "sweep_steady_images_s": rates,
        "steady_ratio": [r / seq_rate for r in rates],
        "loss_max_rel_diff_by_step": diff.tolist(), "steps_within_1e-4": agree,
        "matmul_peak_gflops": peak / 1e9,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{jax.devices()[0].device_kind}, {jax.device_count()} devices",
        "load_average_1min": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
