"""A sweep of N text-to-image generators as one program vs the same N trained one after another.

Both sides train the same N members (C^3 variants c1, c2_collapse, c2_corrupt, c3, cycled;
seeds 0, 1, ...) for --steps G+D steps (lazy R1 and path-length phases as ``regs_at``) on
the same random batches, from the same initial parameters, with the trainer's parts of
``t2i_train.py``'s preset (default: shapes_t2i's generator, discriminator and world CLIP
image tower, batch 8):
  * sequential (one run per generator): per member, a sweep of one over all devices, as a
    single run trains it (``gan_sweep.TrainStep``, its own jit, hence its own
    compilation of each regularization variant), its init, its steps;
  * sweep: the N members stacked and split over the devices (``gan_sweep.member_layout``),
    one after another on each inside one compiled program (``gan_sweep.over_members``),
    one compilation per variant.
Wall time includes compilation (what a researcher waits for); "steady" is images/s over the
steps that compile nothing (the first step of each variant excluded). The two sides run one
after the other in one process (persistent compilation cache off), then the sweep once
more (``--sweep_runs``), so a slow spell of the shared machine shows as a spread. The
sides' final losses are compared (they train the same members). Prints a table and two JSON
lines (wall and steady rate; ``ours`` the first sweep run, every run listed), with the
matmul peak of this run and the load average. ``--smoke``: the 'tiny' preset, 1 member,
2 steps, one sweep run, through the same code (seconds; the test suite runs it, with the
compilation cache it is given).
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

VARIANTS = ("c1", "c2_collapse", "c2_corrupt", "c3")
LOSSES = ("g_adv", "d_adv")
# --smoke: the sizes of the test suite's run of this benchmark.
# The tiny preset has one regularization variant (R1 every step, no path-length penalty):
# 2 steps are its compiling step and one timed one. One member: the sweep's program is then
# the sequential side's, which the compilation cache serves (the G+D step compiles once, 24 s
# against 50 s with 2 members); tests/test_gan_sweep.py checks a sweep of two against its
# members.
SMOKE = dict(preset="tiny", members=1, steps=2, sweep_runs=1)


def setup(preset_name: str):
    """What ``gan_sweep.member_step`` reads of a GanSweep (its layout set per side), and
    the trainer's config."""
    parts = t2i_train.trainer_parts(preset_name)
    gan = parts["gan"]
    return types.SimpleNamespace(
        config=parts["config"], gan=gan, gen=stylegan2.Generator(gan),
        disc=stylegan2.Discriminator(gan), encoder=parts["encoder"], tx=parts["tx"],
        g_tx=parts["g_tx"], d_tx=parts["d_tx"], cfg=parts["cfg"])


def members(n: int, cond_dim: int, twice: bool) -> tuple:
    """[(variant, seed)] and each member's settings (random embedding moments)."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=(1024, cond_dim)) + 2.0 * rng.normal(size=cond_dim)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    moments = c3.Moments(unit.mean(0).astype(np.float32), np.ones(cond_dim, np.float32))
    chosen = [(VARIANTS[i % len(VARIANTS)], i) for i in range(n)]
    return chosen, [{**c3.member_settings(v, c3.CLIP_SIGMA, moments, moments),
                     "twice": generation.collapse_twice(v, twice)} for v, _ in chosen]


def batches(steps: int, batch: int, gan) -> list:
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (batch, gan.resolution, gan.resolution, 3),
                                   dtype=np.uint8),
             "embedding": rng.normal(size=(batch, gan.cond_dim)).astype(np.float32)}
            for _ in range(steps)]


def _timed(run_step, regs: list) -> tuple:
    """Runs ``run_step(i)`` (-> metrics) for every step; returns the seconds of the steps
    that compile nothing (all but the first of each ``regs`` variant), their count, and the
    losses of every step, [steps, len(LOSSES), members]."""
    seen, seconds, counted, losses = set(), 0.0, 0, []
    for i, r in enumerate(regs):
        start = time.perf_counter()
        metrics = jax.device_get(run_step(i))
        if r in seen:
            seconds, counted = seconds + time.perf_counter() - start, counted + 1
        seen.add(r)
        losses.append([np.atleast_1d(metrics[k]) for k in LOSSES])
    return seconds, counted, np.asarray(losses, np.float64)


def side(s, n: int, seeds_host, settings_host: list):
    """(initial state, jitted step, batch sharding, placed settings, placed seeds) of a
    sweep of ``n`` members with ``s``'s layout."""
    layout = s.layout
    stacked = {k: np.stack([m[k] for m in settings_host]) for k in settings_host[0]}
    seeds, stacked = layout.put_members((np.asarray(seeds_host, np.uint32), stacked))
    init = lambda k: gan_sweep.stacked_init(k, s.gen, s.disc, s.tx)
    shardings = layout.state_shardings(jax.eval_shape(init, seeds))
    state = jax.jit(init, out_shardings=shardings)(seeds)
    step_fn = gan_sweep.TrainStep(s, s.cfg, shardings)
    return state, step_fn, layout.batch_sharding(), stacked, seeds


def sequential(s, chosen, settings, data, regs) -> tuple:
    """Each member as its own run (a sweep of one): its own jit and compilations."""
    s.layout = gan_sweep.member_layout(1, 1)
    wall, steady, counted, losses = 0.0, 0.0, 0, []
    for (_, seed), setting in zip(chosen, settings):
        jax.clear_caches()  # a run of its own traces its programs again
        start = time.perf_counter()
        state, step_fn, put, setting, seeds = side(s, 1, [seed], [setting])
        box = [state]

        def one(i):
            batch = jax.tree.map(lambda a: parallel.put_whole(a[None], put), data[i])
            box[0], metrics = step_fn(box[0], batch, setting, seeds, regs[i])
            return metrics
        seconds, count, member_losses = _timed(one, regs)
        wall += time.perf_counter() - start
        steady, counted = steady + seconds, counted + count
        losses.append(member_losses)
    return wall, steady, counted, np.concatenate(losses, axis=2)


def sweep(s, chosen, settings, data, regs) -> tuple:
    """The N members stacked, trained by gan_sweep's one compiled step."""
    n = len(chosen)
    s.layout = gan_sweep.member_layout(n, 1)
    jax.clear_caches()  # each sweep run traces its programs as a fresh run does
    start = time.perf_counter()
    state, step_fn, put, stacked, seeds = side(s, n, [seed for _, seed in chosen], settings)
    box = [state]

    def one(i):  # every member gets the step's batch
        batch = jax.tree.map(lambda a: parallel.put_whole(np.broadcast_to(a, (n,) + a.shape), put),
                             data[i])
        box[0], metrics = step_fn(box[0], batch, stacked, seeds, regs[i])
        return metrics
    steady, counted, losses = _timed(one, regs)
    return time.perf_counter() - start, steady, counted, losses


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(t2i_train.PRESETS), default="shapes_t2i")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=None,
                   help="steps per member (default: 2 * generator.r1_every, two lazy-R1 "
                        "cycles)")
    p.add_argument("--sweep_runs", type=int, default=2,
                   help="times the sweep runs (after the sequential side; the spread shows "
                        "slow spells)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    else:  # every program compiles here, as in a fresh run
        jax.config.update("jax_enable_compilation_cache", False)
    if args.members < 1:
        raise SystemExit("--members must be >= 1")
    s = setup(args.preset)
    steps = args.steps or 2 * s.config.generator.r1_every
    regs = [generation.regs_at(s.config, i) for i in range(steps)]
    if steps <= len(set(regs)):
        raise SystemExit(f"--steps must be > {len(set(regs))} (the first step of each "
                         "regularization variant compiles, then timed ones)")
    chosen, settings = members(args.members, s.gan.cond_dim,
                               s.config.generator.collapse_twice)
    data = batches(steps, s.cfg.batch_size, s.gan)
    images = args.members * s.cfg.batch_size
    print(f"preset {args.preset}: {args.members} members x {steps} steps, batch "
          f"{s.cfg.batch_size}, R1 every {s.cfg.r1_every}, path-length penalty every "
          f"{s.cfg.pl_every} (weight {s.cfg.pl_weight})", flush=True)
    seq_wall, seq_steady, seq_counted, seq_losses = sequential(s, chosen, settings, data, regs)
    print(f"sequential: {seq_wall:.1f} s wall", flush=True)
    runs = [sweep(s, chosen, settings, data, regs) for _ in range(max(args.sweep_runs, 1))]
    for i, run in enumerate(runs):
        print(f"sweep run {i + 1}: {run[0]:.1f} s wall", flush=True)
    # Per step, the largest relative difference of a member's losses between the sides.
    diff = (np.abs(runs[0][3] - seq_losses) / np.abs(seq_losses)).max(axis=(1, 2))
    total_images = images * steps
    seq_rate = s.cfg.batch_size * seq_counted / seq_steady
    rates = [images * counted / steady for _, steady, counted, _ in runs]
    walls = [total_images / run[0] for run in runs]
    seq_wall_rate = total_images / seq_wall
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    print("| N | sequential wall | sweep wall (each run) | wall ratio | sequential steady | "
          "sweep steady | steady ratio | matmul peak |")
    each = lambda values, fmt: " / ".join(format(v, fmt) for v in values)
    print(f"| {args.members} | {seq_wall:.1f} s | {each([r[0] for r in runs], '.1f')} s | "
          f"{each([seq_wall / r[0] for r in runs], '.2f')}x | {seq_rate:.0f} images/s | "
          f"{each(rates, '.0f')} images/s | {each([r / seq_rate for r in rates], '.2f')}x | "
          f"{peak / 1e9:.0f} GFLOP/s |")
    agree = int(np.argmax(diff > 1e-4)) if (diff > 1e-4).any() else steps
    print(f"losses, sweep vs sequential: max relative difference {diff[:3].max():.1e} over the "
          f"first 3 steps, {diff.max():.1e} over all {steps}; within 1e-4 for the first "
          f"{agree} steps")
    common = {
        "preset": args.preset, "members": args.members, "steps": steps,
        "batch": s.cfg.batch_size, "r1_every": s.cfg.r1_every, "pl_every": s.cfg.pl_every,
        "pl_weight": s.cfg.pl_weight, "sequential_wall_s": seq_wall,
        "sweep_wall_s": [r[0] for r in runs], "loss_max_rel_diff_by_step": diff.tolist(),
        "steps_within_1e-4": agree, "matmul_peak_gflops": peak / 1e9, "smoke": args.smoke,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{jax.devices()[0].device_kind}, {jax.device_count()} devices",
        "load_average_1min": os.getloadavg()[0]}
    print(json.dumps({
        "name": "gan_sweep_wall", "reference_name": "sequential_runs_wall",
        "ours": walls[0], "reference": seq_wall_rate, "unit": "images/s (wall, with compilation)",
        "ratio": walls[0] / seq_wall_rate, "ours_runs": walls, **common}))
    print(json.dumps({
        "name": "gan_sweep_steady", "reference_name": "sequential_runs_steady",
        "ours": rates[0], "reference": seq_rate,
        "unit": "images/s (steady, compiling steps excluded)",
        "ratio": rates[0] / seq_rate, "ours_runs": rates, **common}))


if __name__ == "__main__":
    main()
