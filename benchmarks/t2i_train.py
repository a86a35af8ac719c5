"""Images/s of our text-to-image G+D train step (LAFITE StyleGAN2, C^3 transform, frozen CLIP
image tower for the itc term, Adam for G and D, lazy R1 and path-length penalties, EMA),
with its FLOP rate against the machine's float32 matmul peak.

The step is ``gan_sweep.TrainStep`` as ``gan_sweep.train`` builds it for a single run
(a sweep of one member over all devices, ``gan_sweep.member_layout(1, 1)``; jitted, state
donated; the step settings ``StepConfig.from_config``, G's and D's Adam rescaled for lazy
regularization, the regularization phases ``regs_at``), with random weights and random
batches; every preset is a full 't2i' trainer config
(``c3_jax.experiments.t2i.default_config``):
  * ``--preset shapes_t2i`` (default): configs/shapes_t2i.py's generator and discriminator
    (its config as ``shapes_t2i`` trains on it, the same nested schema: 32x32, cond 64-d,
    generator.batch_size 8, R1 every 16 steps, the path-length penalty every 4) and its
    world's CLIP image tower (width 64, depth 3, 4 heads, MLP 256, gelu, patch 8,
    projection 64), wrapped as the experiment wraps it;
  * ``--preset coco64``: the COCO setup of ``t2i.default_config()`` (z 512, w 512,
    8 mapping layers, cond_hidden 512, R1 gamma 10 every 16 steps, batch 16) at 64x64 with
    generator.channel_base 8192, generator.channel_max 128, and a ViT-B/32-shaped CLIP
    image tower (random weights) at 224x224, through ``generation.tower_encoder`` (resize,
    CLIP normalization);
  * ``--preset tiny`` (``--smoke``): 8x8 images (one upsampling block), 16-d condition,
    batch 4, R1 on every step, no path-length penalty (one compiled program).

FLOPs come from XLA's cost analysis of each compiled variant of the step (the static
``regs`` = (path-length step, R1 step)); the timed steps run those compiled executables, so
each step is charged the FLOPs of the variant it runs. The timed window covers ``--steps``
consecutive steps (default two R1 cycles), and ``gflop_per_step`` is the window's mean.
Warm-up (and compilation) excluded; time.perf_counter around the window, closed by
block_until_ready. The reference is the machine's limit: a plain 2048^2 float32 matmul
(256^2 with --smoke) measured in the same run; ``ratio`` is the fraction of it the step
reaches. Prints the settings, then one JSON line (with the 1-minute load average).
"""
import argparse
import json
import os
import platform
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax import c3
from c3_jax.timing import matmul_peak_flops
from c3_jax.models import clip, stylegan2
from c3_jax.experiments.t2i import default_config as t2i_defaults
from c3_jax.train import connect, gan_sweep, generation
from c3_jax.world import t2i as world_t2i


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _shapes_preset() -> dict:
    # The world's config is a full trainer config (the t2i schema with the world's
    # generator.*): the shapes_t2i experiment trains on it as it is.
    world = world_t2i.default_config()
    config, k = world, world.connect
    tower = clip.Tower(k.width, k.depth, k.heads, 4 * k.width, "gelu")
    clip_config = clip.CLIPConfig(text=tower, vision=tower, projection_dim=k.projection_dim,
                                  vocab_size=100, max_positions=20, eos_token_id=1,
                                  image_size=world.world.image_size, patch_size=k.patch_size)
    return {"config": config, "clip": clip_config, "resolution": world.world.image_size,
            "cond_dim": k.projection_dim, "encoder": "shapes_world_clip"}


def _coco64_preset() -> dict:
    config = t2i_defaults()
    config.generator.channel_base, config.generator.channel_max = 8192, 128
    return {"config": config, "clip": clip.CLIPConfig(),  # ViT-B/32 shapes, random weights
            "resolution": 64, "cond_dim": 512, "encoder": "vit_b32_shaped_clip_224"}


def _tiny_preset() -> dict:
    config = t2i_defaults()
    config.generator.update(dict(z_dim=8, w_dim=8, mapping_layers=2, cond_hidden=8,
                                 channel_base=64, channel_max=8, batch_size=4, r1_every=1,
                                 pl_weight=0.0))
    tower = clip.Tower(16, 1, 2, 32, "gelu")
    clip_config = clip.CLIPConfig(text=tower, vision=tower, projection_dim=16, vocab_size=20,
                                  max_positions=8, eos_token_id=1, image_size=8, patch_size=4)
    return {"config": config, "clip": clip_config, "resolution": 8, "cond_dim": 16,
            "encoder": "tiny_world_clip"}


PRESETS = {"shapes_t2i": _shapes_preset, "coco64": _coco64_preset, "tiny": _tiny_preset}
# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(preset="tiny", steps=2, warmup=1)


def make_encoder(clip_config: clip.CLIPConfig, preset: str) -> generation.Encoder:
    """The frozen CLIP image tower on images in [-1, 1], as the trainer wraps it."""
    model = clip.CLIP(clip_config)
    size = clip_config.image_size
    pixels = jnp.zeros((1, 3, size, size), jnp.float32)
    params = jax.jit(lambda k: model.init(k, pixels, method="encode_image"))(
        jax.random.key(1))["params"]
    if preset == "coco64":  # generation.clip_encoder's resize and CLIP normalization
        return generation.tower_encoder(model, params, CLIP_MEAN, CLIP_STD)
    # the shapes_t2i experiment's encoder: the world's pixels, no crop
    fn = lambda p, x: model.apply({"params": p}, connect.pixels((x + 1.0) * 127.5),
                                  method="encode_image")
    return generation.Encoder(fn, params)


def trainer_parts(preset_name: str) -> dict:
    """What ``gan_sweep.GanSweep`` builds from a preset's config: the config, GAN config,
    encoder, Adam (G's and D's rescaled for lazy regularization) and the step settings."""
    preset = PRESETS[preset_name]()
    config = preset["config"]
    gan = generation.gan_config(config, preset["cond_dim"], preset["resolution"])
    return {"config": config, "gan": gan, "encoder": make_encoder(preset["clip"], preset_name),
            "tx": generation.optimizer(config),
            "g_tx": generation.optimizer(config, config.generator.pl_every),
            "d_tx": generation.optimizer(config, config.generator.r1_every),
            "cfg": generation.StepConfig.from_config(config), "encoder_name": preset["encoder"]}


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
                   help="timed steps (default: 2 * generator.r1_every, two lazy-R1 "
                   "cycles)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    parts = trainer_parts(args.preset)
    config, gan, encoder = parts["config"], parts["gan"], parts["encoder"]
    if args.batch:
        config.generator.batch_size = args.batch
    cfg = generation.StepConfig.from_config(config)
    steps = args.steps or 2 * config.generator.r1_every
    b = config.generator.batch_size

    layout = gan_sweep.member_layout(1, 1)
    sweep = types.SimpleNamespace(  # what gan_sweep's step reads of a GanSweep
        gen=stylegan2.Generator(gan), disc=stylegan2.Discriminator(gan), encoder=encoder,
        g_tx=parts["g_tx"], d_tx=parts["d_tx"], layout=layout)
    init = lambda s: gan_sweep.stacked_init(s, sweep.gen, sweep.disc, parts["tx"])
    seeds = layout.put_members(np.asarray([2], np.uint32))
    shardings = layout.state_shardings(jax.eval_shape(init, seeds))
    state = jax.jit(init, out_shardings=shardings)(seeds)
    n_params = {k: sum(x.size for x in jax.tree.leaves(getattr(state, k)))
                for k in ("g_params", "d_params")}

    rng = np.random.default_rng(0)
    e = rng.normal(size=(1024, gan.cond_dim)) + 2.0 * rng.normal(size=gan.cond_dim)
    moments = c3.Moments((e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0),
                         np.ones(gan.cond_dim))
    settings = {**c3.member_settings("c3", c3.CLIP_SIGMA, moments, moments),
                "twice": generation.collapse_twice("c3", config.generator.collapse_twice)}
    settings = layout.put_members(jax.tree.map(lambda a: np.asarray(a)[None], settings))
    batch_sharding = layout.batch_sharding()
    batches = [jax.tree.map(lambda a: jax.device_put(a[None], batch_sharding), {
        "image": rng.integers(0, 256, (b, gan.resolution, gan.resolution, 3), dtype=np.uint8),
        "embedding": rng.normal(size=(b, gan.cond_dim)).astype(np.float32)})
        for _ in range(4)]

    step_fn = gan_sweep.TrainStep(sweep, cfg, shardings, squeeze=True)
    regs = [generation.regs_at(config, i) for i in range(args.warmup + steps)]
    compiled, flops_of, compile_s = {}, {}, 0.0
    for r in sorted(set(regs)):  # each variant the run meets, compiled once
        start = time.perf_counter()
        compiled[r] = step_fn.lower(state, batches[0], settings, seeds, r).compile()
        compile_s += time.perf_counter() - start
        flops_of[r] = _flops(compiled[r])

    for i in range(args.warmup):
        state, metrics = compiled[regs[i]](state, batches[i % len(batches)], settings, seeds,
                                           step_fn.encoder_params)
    jax.block_until_ready(state)
    timed = regs[args.warmup:]
    start = time.perf_counter()
    for i, r in enumerate(timed):
        state, metrics = compiled[r](state, batches[i % len(batches)], settings, seeds,
                                     step_fn.encoder_params)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(np.isfinite(v) for v in metrics.values()):
        raise RuntimeError(f"non-finite metrics after the timed steps: {metrics}")

    flops = sum(flops_of[r] for r in timed)
    achieved = flops / elapsed
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    images_s = b * steps / elapsed
    r1_steps, pl_steps = sum(r[1] for r in timed), sum(r[0] for r in timed)
    print(f"preset {args.preset}: {gan}, batch {b}, encoder {parts['encoder_name']}, "
          f"G {n_params['g_params']:,} / D {n_params['d_params']:,} params", flush=True)
    print(f"{steps} timed steps ({r1_steps} with R1, {pl_steps} with the path-length penalty) "
          f"in {elapsed:.2f} s: {images_s:.1f} images/s, {achieved / 1e9:.1f} GFLOP/s of a "
          f"{peak / 1e9:.1f} GFLOP/s matmul peak; compile {compile_s:.1f} s", flush=True)
    print(json.dumps({
        "name": "t2i_train_step", "reference_name": "plain float32 matmul (machine peak)",
        "ours": achieved / 1e9, "reference": peak / 1e9, "unit": "GFLOP/s",
        "ratio": achieved / peak, "images_per_s": images_s,
        "gflop_per_step": flops / steps / 1e9,
        "gflop_per_step_by_variant": {f"pl={int(r[0])},r1={int(r[1])}": f / 1e9
                                      for r, f in flops_of.items()},
        "step_s": elapsed / steps, "steps": steps, "r1_steps": r1_steps, "pl_steps": pl_steps,
        "warmup": args.warmup, "compile_s": compile_s, "preset": args.preset, "batch": b,
        "resolution": gan.resolution, "cond_dim": gan.cond_dim, "z_dim": gan.z_dim,
        "w_dim": gan.w_dim, "channel_base": gan.channel_base, "channel_max": gan.channel_max,
        "encoder": parts["encoder_name"], "g_params": n_params["g_params"],
        "d_params": n_params["d_params"], "dtype": "float32", "smoke": args.smoke,
        "final_metrics": {k: metrics[k] for k in ("d_adv", "g_adv", "g_itd", "g_itc")
                          if k in metrics},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{jax.devices()[0].device_kind}",
        "load_average_1min": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
