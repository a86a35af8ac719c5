"""Images/s of our text-to-image G+D train step (LAFITE StyleGAN2, C^3 transform, frozen CLIP
image tower for the itc term, Adam for G and D, EMA), with its FLOP rate against the
machine's float32 matmul peak.

The step is ``generation.make_train_step`` exactly as ``generation.train`` builds it (jitted,
state donated, on ``parallel.make_mesh(1)``), with random weights and random batches:
  * ``--preset shapes_t2i`` (default): configs/shapes_t2i.py's generator and discriminator
    (32x32, cond 64-d, z 32, w 64, 2 mapping layers, cond_hidden 64, channel_base 512,
    channel_max 32, RGB from the last resolution, batch 8, R1 gamma 1 every 16 steps) and
    its world's CLIP image tower (width 64, depth 3, 4 heads, MLP 256, gelu, patch 8,
    projection 64), wrapped as
    ``shapes_t2i._encoder`` wraps it;
  * ``--preset coco64``: the COCO setup of ``t2i_base.get_config()`` (z 512, w 512,
    8 mapping layers, cond_hidden 512, R1 gamma 10 every 16 steps, batch 16) at 64x64 with
    channel_base 8192, channel_max 128, and a ViT-B/32-shaped CLIP image tower (random
    weights) at 224x224, resized and normalized as ``generation.clip_encoder`` does.

FLOPs come from XLA's cost analysis of the two compiled variants of the step (with and
without the lazy R1 penalty: ``with_r1`` is static). Each timed step is charged the FLOPs
of the variant it runs; the timed window covers ``--steps`` consecutive steps (default two R1
cycles: one R1 step in every ``r1_every``), and ``gflop_per_step`` is the window's mean.
Warm-up (and compilation) excluded; time.perf_counter around the window, closed by
block_until_ready. The matmul peak (a plain 2048^2 float32 matmul) is measured in the same
run. Prints the settings, then one JSON line (with the 1-minute load average).
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax import c3
from c3_jax.timing import matmul_peak_flops
from c3_jax.models import clip, stylegan2
from c3_jax.train import connect, generation
from c3_jax import parallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
from configs import shapes_t2i, t2i_base  # noqa: E402


def _shapes_preset() -> dict:
    config = shapes_t2i.get_config()
    c, k, size = config.generator, config.connect, config.world.image_size
    gan = stylegan2.GANConfig(resolution=size, cond_dim=k.projection_dim,
                              z_dim=c.z_dim, w_dim=c.w_dim, mapping_layers=c.mapping_layers,
                              cond_hidden=c.cond_hidden, channel_base=c.channel_base,
                              channel_max=c.channel_max, architecture=c.architecture)
    tower = clip.Tower(k.width, k.depth, k.heads, 4 * k.width, "gelu")
    clip_config = clip.CLIPConfig(text=tower, vision=tower, projection_dim=k.projection_dim,
                                  vocab_size=100, max_positions=20, eos_token_id=1,
                                  image_size=size, patch_size=k.patch_size)
    # The step settings shapes_t2i._generator_config gives the generator run.
    step = dict(batch_size=c.batch, r1_gamma=c.r1_gamma, r1_every=c.r1_every,
                itd_weight=c.itd_weight, itc_weight=c.itc_weight, temperature=0.5,
                ema_kimg=c.ema_kimg, ema_rampup=0.05)
    return {"gan": gan, "clip": clip_config, "step": step, "lr": c.lr,
            "encoder": "shapes_world_clip"}


def _coco64_preset() -> dict:
    c = t2i_base.get_config()
    gan = stylegan2.GANConfig(resolution=64, cond_dim=512, z_dim=c.z_dim, w_dim=c.w_dim,
                              mapping_layers=c.mapping_layers, cond_hidden=c.cond_hidden,
                              channel_base=8192, channel_max=128, mbstd_group=c.mbstd_group)
    clip_config = clip.CLIPConfig()  # ViT-B/32 shapes (the paper's encoder), random weights
    step = dict(batch_size=c.batch_size, r1_gamma=c.r1_gamma, r1_every=c.r1_every,
                itd_weight=c.itd_weight, itc_weight=c.itc_weight, temperature=c.temperature,
                ema_kimg=c.ema_kimg, ema_rampup=c.ema_rampup)
    return {"gan": gan, "clip": clip_config, "step": step, "lr": c.lr,
            "encoder": "vit_b32_shaped_clip_224"}


PRESETS = {"shapes_t2i": _shapes_preset, "coco64": _coco64_preset}


def make_encoder(clip_config: clip.CLIPConfig, preset: str) -> generation.Encoder:
    """The frozen CLIP image tower on images in [-1, 1], as the trainer wraps it."""
    model = clip.CLIP(clip_config)
    size = clip_config.image_size
    pixels = jnp.zeros((1, 3, size, size), jnp.float32)
    params = jax.jit(lambda k: model.init(k, pixels, method="encode_image"))(
        jax.random.key(1))["params"]
    if preset == "shapes_t2i":  # shapes_t2i._encoder
        fn = lambda p, x: model.apply({"params": p}, connect.pixels((x + 1.0) * 127.5),
                                      method="encode_image")
    else:  # generation.clip_encoder's resize and CLIP normalization
        mean = jnp.asarray([0.48145466, 0.4578275, 0.40821073])
        std = jnp.asarray([0.26862954, 0.26130258, 0.27577711])

        def fn(p, x):
            x = jax.image.resize((x + 1.0) / 2.0, (x.shape[0], size, size, 3), "bilinear")
            return model.apply({"params": p}, jnp.transpose((x - mean) / std, (0, 3, 1, 2)),
                               method="encode_image")
    return generation.Encoder(fn, params)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="shapes_t2i")
    p.add_argument("--batch", type=int, default=None, help="images per step (preset's batch)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps (default: 2 * r1_every, two lazy-R1 cycles)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
    args = p.parse_args()

    preset = PRESETS[args.preset]()
    gan, step_kw = preset["gan"], dict(preset["step"])
    if args.batch:
        step_kw["batch_size"] = args.batch
    cfg = generation.StepConfig(**step_kw)
    steps = args.steps or 2 * cfg.r1_every
    b = cfg.batch_size

    gen, disc = stylegan2.Generator(gan), stylegan2.Discriminator(gan)
    encoder = make_encoder(preset["clip"], args.preset)
    opt_config = t2i_base.get_config()
    opt_config.lr = preset["lr"]
    tx = generation.optimizer(opt_config)
    mesh = parallel.make_mesh(1)

    def init_state():
        z, c = jnp.zeros((2, gan.z_dim)), jnp.zeros((2, gan.cond_dim))
        img = jnp.zeros((2, gan.resolution, gan.resolution, 3))
        g = gen.init(jax.random.key(2), z, c)["params"]
        d = disc.init(jax.random.key(3), img, c)["params"]
        return generation.GANState(jnp.zeros((), jnp.int32), g, d, tx.init(g), tx.init(d), g)

    shardings = parallel.state_shardings(mesh, jax.eval_shape(init_state))
    state = jax.jit(init_state, out_shardings=shardings)()
    n_params = {k: sum(x.size for x in jax.tree.leaves(getattr(state, k)))
                for k in ("g_params", "d_params")}

    rng = np.random.default_rng(0)
    e = rng.normal(size=(1024, gan.cond_dim)) + 2.0 * rng.normal(size=gan.cond_dim)
    moments = c3.Moments((e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0),
                         np.ones(gan.cond_dim))
    settings = c3.member_settings("c3", c3.CLIP_SIGMA, moments, moments)
    key = jax.random.key(0)
    batch_sharding = parallel.batch_sharding(mesh)
    batches = [jax.device_put({
        "image": rng.integers(0, 256, (b, gan.resolution, gan.resolution, 3), dtype=np.uint8),
        "embedding": rng.normal(size=(b, gan.cond_dim)).astype(np.float32)}, batch_sharding)
        for _ in range(4)]

    build = lambda: generation.make_train_step(gen, disc, encoder, cfg, tx, tx, mesh,
                                               shardings)
    step_fn = build()
    example = (state, batches[0], settings, key)
    start = time.perf_counter()
    with_r1 = _flops(step_fn.lower(*example, True).compile())
    compile_s = time.perf_counter() - start
    without_r1 = _flops(step_fn.lower(*example, False).compile())

    for i in range(args.warmup):
        state, metrics = step_fn(state, batches[i % len(batches)], settings, key,
                                 i % cfg.r1_every == 0)
    jax.block_until_ready((state, metrics))
    first = args.warmup  # state.step of the first timed step
    r1_steps = sum((first + i) % cfg.r1_every == 0 for i in range(steps))
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step_fn(state, batches[i % len(batches)], settings, key,
                                 (first + i) % cfg.r1_every == 0)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(np.isfinite(v) for v in metrics.values()):
        raise RuntimeError(f"non-finite metrics after the timed steps: {metrics}")

    flops = r1_steps * with_r1 + (steps - r1_steps) * without_r1
    achieved = flops / elapsed
    peak = matmul_peak_flops()
    images_s = b * steps / elapsed
    print(f"preset {args.preset}: {gan}, batch {b}, encoder {preset['encoder']}, "
          f"G {n_params['g_params']:,} / D {n_params['d_params']:,} params", flush=True)
    print(f"{steps} timed steps ({r1_steps} with R1) in {elapsed:.2f} s: {images_s:.1f} images/s, "
          f"{achieved / 1e9:.1f} GFLOP/s of a {peak / 1e9:.1f} GFLOP/s matmul peak; "
          f"compile {compile_s:.1f} s", flush=True)
    print(json.dumps({
        "name": "t2i_train_step", "unit": "images/s", "ours": images_s,
        "gflop_per_step": flops / steps / 1e9, "achieved_gflops": achieved / 1e9,
        "matmul_peak_gflops": peak / 1e9, "utilization": achieved / peak,
        "reference_name": "plain 2048^2 float32 matmul", "reference": peak / 1e9,
        "reference_unit": "GFLOP/s", "ratio": achieved / peak,
        "gflop_per_step_with_r1": with_r1 / 1e9, "gflop_per_step_without_r1": without_r1 / 1e9,
        "step_s": elapsed / steps, "steps": steps, "r1_steps": r1_steps, "warmup": args.warmup,
        "compile_s": compile_s, "preset": args.preset, "batch": b,
        "resolution": gan.resolution, "cond_dim": gan.cond_dim, "z_dim": gan.z_dim,
        "w_dim": gan.w_dim, "channel_base": gan.channel_base, "channel_max": gan.channel_max,
        "encoder": preset["encoder"], "g_params": n_params["g_params"],
        "d_params": n_params["d_params"], "dtype": "float32",
        "final_metrics": {k: metrics[k] for k in ("d_adv", "g_adv", "g_itd", "g_itc")},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{jax.devices()[0].device_kind}",
        "load_average_1min": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
