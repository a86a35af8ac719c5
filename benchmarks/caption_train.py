"""Captions/s of our ClipCap train step (C^3 transform, GPT-2 small fine-tuned, AdamW) vs PyTorch.

Both sides train the same model from the same weights on the same batches:
  * GPT-2 small (transformers ``GPT2Config()`` defaults) with random weights
    (torch.manual_seed(0)), saved with save_pretrained and loaded into ours through
    ``gpt2.from_pretrained``; the ClipCap MLP mapper 512 -> 3840 -> tanh -> 7680 (prefix 10),
    whose initial weights are copied from ours into the PyTorch one; every param trains;
  * a batch of --batch random 512-d embeddings and random caption ids (--caption_tokens,
    some rows padded with a 0/1 mask), the C^3 transform (normalize, subtract the modality
    mean, add N(0, 0.016) noise, renormalize), masked next-token cross-entropy over the
    caption tokens (ours: ``ClipCap.caption_nll``, the LM head over caption positions only,
    in chunks), AdamW (lr 2e-5, weight decay 0.01).
Ours is our code path, the trainer's for a run of one captioner (a sweep of one member):
``captioning.make_optimizer``, ``caption_sweep.stacked_init`` and ``compiled_step`` (jitted,
state donated; the C^3 transform from ``c3.member_settings``) on
``parallel.member_mesh(1)``, batches from numpy with their member axis placed by
``parallel.put_whole``. PyTorch is
the ClipCap reference's way: ``GPT2LMHeadModel`` with ``inputs_embeds=cat(prefix, wte(ids))``
and ``attention_mask``, an ``nn.Sequential`` mapper, ``torch.optim.AdamW``, ``model.train()``,
default threads. GPT-2 dropout is set to 0 on the
PyTorch side because our GPT-2 has none. float32 on both sides (``--dtype bfloat16``: ours
computes in bfloat16 with float32 params, PyTorch runs under CPU bfloat16 autocast).
The first step of each side gets the same inputs, the same noise and the same params, and
its losses are checked to agree. Warm-up (and compilation) excluded on both sides.
The sides alternate step by step and each side's median step time is reported, so slow
spells of this shared machine hit both alike. Prints the check, the step times, then one
JSON line (with the 1-minute load average). ``--smoke``: a 2-layer, 32-wide GPT-2 and a
batch of 4 through the same code (seconds; the test suite runs it).
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from c3_jax import c3
from c3_jax.timing import matmul_peak_flops
from c3_jax.train import caption_sweep, captioning
from c3_jax import parallel
from c3_jax.experiments.caption import default_config as caption_defaults

EMBED_DIM = 512
# --smoke: the sizes (and the tiny GPT-2) of the test suite's run of this benchmark.
SMOKE = dict(batch=4, caption_tokens=6, prefix_length=2, steps=1, warmup=0, embed_dim=16)
SMOKE_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16)


def train_flops(gpt, prefix: int, tokens: int, batch: int, embed_dim: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward, 2 FLOPs per MAC):

      6 * N_blocks * B * T          transformer blocks, N_blocks = non-embedding params
      + 6 * width * vocab * B * T   tied LM head, logits at all T = prefix + caption positions
      + 12 * depth * T^2 * width * B  attention scores and weighted values (QK^T, AV)
      + 6 * N_mapper * B            mapper, applied once per caption (not per token)

    Embedding lookups, layer norms, softmaxes, the loss and AdamW are left out (memory-bound,
    not matmul work), so this is the useful-matmul rate both sides are measured against.
    """
    w, v, d, t = gpt.width, gpt.vocab_size, gpt.depth, prefix + tokens
    mlp = gpt.mlp_dim or 4 * w
    per_block = 4 * w * w + 4 * w + 2 * w * mlp + mlp + w + 4 * w  # attn, mlp, 2 layer norms
    n_blocks = d * per_block + 2 * w  # + ln_f
    n_mapper = embed_dim * (w * prefix // 2) + w * prefix // 2 + (w * prefix // 2) * w * prefix \
        + w * prefix
    return (6 * n_blocks * batch * t + 6 * w * v * batch * t + 12 * d * t * t * w * batch
            + 6 * n_mapper * batch)


def make_batches(n: int, batch: int, tokens: int, vocab: int, dim: int, seed: int = 0) -> list:
    """Random embeddings and caption ids; about half the rows are padded (ids 0, mask 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1, vocab, size=(batch, tokens), dtype=np.int32)
        lengths = np.where(rng.random(batch) < 0.5, tokens, rng.integers(tokens // 3, tokens,
                                                                         size=batch))
        mask = (np.arange(tokens)[None] < lengths[:, None]).astype(np.int32)
        out.append({"embedding": rng.normal(size=(batch, dim)).astype(np.float32),
                    "ids": ids * mask, "mask": mask})
    return out


def modality_mean(dim: int, seed: int = 1) -> np.ndarray:
    """A stand-in modality mean: the mean of normalized random embeddings around one direction."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(1024, dim)) + 3.0 * rng.normal(size=dim)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0).astype(np.float32)


class Ours:
    """Our train step exactly as ``caption_sweep.train`` builds it for one captioner."""

    def __init__(self, gpt_dir: str, args, sigma: float, mean: np.ndarray):
        config = caption_defaults()
        config.captioner.gpt2, config.captioner.dtype = gpt_dir, args.dtype
        config.method.variant, config.method.noise_sigma = "c3", sigma
        config.captioner.batch_size, config.seed = args.batch, 0
        config.captioner.warmup_steps = 0  # lr 2e-5 from the first step (the schedule costs nothing)
        config.captioner.prefix_length = args.prefix_length
        self.model, gpt_params = captioning.build_module(config)
        total = args.warmup + args.steps + 1
        tx = captioning.make_optimizer(config, total)
        self.mesh = parallel.member_mesh(1)
        self.seeds = parallel.put_members(self.mesh, np.zeros(1, np.uint32))
        init = caption_sweep.stacked_init(self.model, tx, args.embed_dim)
        shardings = parallel.member_shardings(self.mesh, jax.eval_shape(init, self.seeds,
                                                                        gpt_params))
        self.state = jax.jit(init, out_shardings=shardings)(self.seeds, gpt_params)
        # Copied: the step donates the state.
        self.mapper_init = jax.tree.map(lambda a: np.array(a[0]), self.state.params["mapper"])
        self.step_fn = caption_sweep.compiled_step(self.model, tx, shardings,
                                                   loss_chunk=args.loss_chunk)
        self.key = jax.random.key(config.seed)
        # C^3 with the stand-in mean as both modalities' mean (only the training side runs).
        moments = c3.Moments(mean, np.ones_like(mean))
        self.settings = parallel.put_members(self.mesh, caption_sweep.stack_settings(
            [c3.member_settings("c3", sigma, moments, moments)]))
        self.batch_sharding = parallel.member_batch_sharding(self.mesh)

    def noise(self, step: int, shape) -> np.ndarray:
        """The standard normal draw our step uses at ``step`` (before scaling by sigma)."""
        return np.asarray(jax.random.normal(jax.random.fold_in(self.key, step), shape))

    def step(self, batch: dict) -> dict:
        """One step on ``batch``; its metrics have a member axis of 1."""
        batch = {k: parallel.put_whole(v[None], self.batch_sharding) for k, v in batch.items()}
        self.state, metrics = self.step_fn(self.state, batch, self.settings, self.seeds)
        return metrics


class Reference:
    """The PyTorch way: GPT2LMHeadModel fed cat(mapper(e), wte(ids)), torch.optim.AdamW."""

    def __init__(self, gpt, mapper_init: dict, prefix_length: int, sigma: float, dtype: str,
                 embed_dim: int):
        import torch
        self.torch, self.gpt, self.prefix_length, self.sigma = torch, gpt, prefix_length, sigma
        width = gpt.config.n_embd
        fc1, fc2 = mapper_init["fc1"], mapper_init["fc2"]
        self.mapper = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, width * prefix_length // 2), torch.nn.Tanh(),
            torch.nn.Linear(width * prefix_length // 2, width * prefix_length))
        with torch.no_grad():  # the same initial mapper as ours
            for layer, p in ((self.mapper[0], fc1), (self.mapper[2], fc2)):
                layer.weight.copy_(torch.from_numpy(p["kernel"].T.copy()))
                layer.bias.copy_(torch.from_numpy(p["bias"]))
        self.gpt.train()
        self.mapper.train()
        self.opt = torch.optim.AdamW(list(self.gpt.parameters()) + list(self.mapper.parameters()),
                                     lr=2e-5, weight_decay=0.01)
        self.autocast = dtype == "bfloat16"

    def step(self, batch: dict, mean, noise=None) -> float:
        torch, F = self.torch, self.torch.nn.functional
        e = torch.from_numpy(batch["embedding"])
        ids = torch.from_numpy(batch["ids"]).long()
        mask = torch.from_numpy(batch["mask"]).float()
        noise = torch.randn_like(e) if noise is None else torch.from_numpy(np.array(noise))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            e = F.normalize(F.normalize(e, dim=-1) - mean + self.sigma * noise, dim=-1)  # C^3
            prefix = self.mapper(e).view(-1, self.prefix_length, self.gpt.config.n_embd)
            embeds = torch.cat([prefix, self.gpt.transformer.wte(ids)], 1)
            attention = torch.cat([torch.ones(mask.shape[0], self.prefix_length), mask], 1)
            logits = self.gpt(inputs_embeds=embeds, attention_mask=attention).logits
            logits = logits[:, self.prefix_length - 1:-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1),
                                  reduction="none").view(ids.shape)
            loss = (nll * mask).sum() / mask.sum().clamp(min=1.0)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


def interleaved(sides: dict, batches: list, warmup: int, steps: int) -> dict:
    """Seconds of each of ``steps`` steps per side, after ``warmup`` steps per side.

    ``sides`` maps a name to ``(step, done)``: ``done`` waits for the step's result. The
    sides alternate step by step, so a slow spell of this shared machine hits both alike.
    """
    for step, done in sides.values():
        for i in range(warmup):
            done(step(batches[i % len(batches)]))
    times = {name: [] for name in sides}
    for i in range(steps):
        batch = batches[(warmup + i) % len(batches)]
        for name, (step, done) in sides.items():
            start = time.perf_counter()
            done(step(batch))
            times[name].append(time.perf_counter() - start)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=40, help="captions per step (the paper's 40)")
    p.add_argument("--caption_tokens", "--caption-tokens", type=int, default=20)
    p.add_argument("--prefix_length", "--prefix-length", type=int, default=10)
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per side (the sides alternate; the median is reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per side after the first (checked) one")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--loss_chunk", type=int, default=0,
                   help="ours: caption positions per LM-head chunk (0: all at once)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max relative first-step loss difference (default 1e-4; 2e-2 bfloat16)")
    p.add_argument("--embed_dim", type=int, default=EMBED_DIM, help="embedding width (CLIP's 512)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}, "
                        f"GPT-2 {SMOKE_GPT2}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    tolerance = args.tolerance or (1e-4 if args.dtype == "float32" else 2e-2)

    import torch
    import transformers
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        **(SMOKE_GPT2 if args.smoke else {}))
    ref_gpt = transformers.GPT2LMHeadModel(hf_config)  # GPT-2 small, random weights
    sigma = c3.CLIP_SIGMA
    mean = modality_mean(args.embed_dim)
    mean_t = torch.from_numpy(mean)
    with tempfile.TemporaryDirectory() as d:
        ref_gpt.save_pretrained(d)
        ours = Ours(d, args, sigma, mean)
    gpt_config = ours.model.gpt
    ref = Reference(ref_gpt, ours.mapper_init, args.prefix_length, sigma, args.dtype,
                    args.embed_dim)

    batches = make_batches(4, args.batch, args.caption_tokens, gpt_config.vocab_size,
                           args.embed_dim)
    tokens = args.prefix_length + args.caption_tokens

    # Step 0 of both: same params, batch and noise; its loss is computed before the update.
    start = time.perf_counter()
    ours_loss = float(ours.step(batches[0])["loss"][0])
    ours_first_s = time.perf_counter() - start  # compile + one step
    ref_loss = ref.step(batches[0], mean_t, noise=ours.noise(0, batches[0]["embedding"].shape))
    rel = abs(ours_loss - ref_loss) / abs(ref_loss)
    print(f"first-step loss: ours {ours_loss:.6f}, PyTorch {ref_loss:.6f}, relative difference "
          f"{rel:.2e} (tolerance {tolerance:g})", flush=True)
    assert rel < tolerance, f"first-step losses differ by {rel:.2e} relative"

    times = interleaved({"ours": (ours.step, jax.block_until_ready),
                         "reference": (lambda b: ref.step(b, mean_t), lambda out: out)},
                        batches[1:], args.warmup, args.steps)
    ours_s, ref_s = (float(np.median(times[k])) for k in ("ours", "reference"))
    print(f"ours: {ours_s:.3f} s/step median, steps {np.round(times['ours'], 2).tolist()} "
          f"(first step with compile {ours_first_s:.1f} s)", flush=True)
    print(f"PyTorch: {ref_s:.3f} s/step median, steps {np.round(times['reference'], 2).tolist()}",
          flush=True)

    flops = train_flops(gpt_config, args.prefix_length, args.caption_tokens, args.batch,
                        args.embed_dim)
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    print(json.dumps({
        "name": "caption_train_step", "reference_name": "pytorch_transformers_gpt2_adamw",
        "ours": args.batch / ours_s, "reference": args.batch / ref_s, "unit": "captions/s",
        "ratio": (args.batch / ours_s) / (args.batch / ref_s), "ours_gflops": flops / ours_s / 1e9,
        "reference_gflops": flops / ref_s / 1e9, "peak_gflops": peak / 1e9,
        "ours_fraction_of_peak": flops / ours_s / peak,
        "reference_fraction_of_peak": flops / ref_s / peak,
        "ours_step_s": ours_s, "reference_step_s": ref_s, "gflop_per_step": flops / 1e9,
        "ours_steps_s": times["ours"], "reference_steps_s": times["reference"],
        "batch": args.batch, "tokens": tokens, "prefix_length": args.prefix_length,
        "caption_tokens": args.caption_tokens, "steps": args.steps, "warmup": args.warmup,
        "dtype": args.dtype, "embed_dim": args.embed_dim, "smoke": args.smoke,
        "reference_dtype": "bfloat16 autocast" if args.dtype == "bfloat16" else "float32",
        "first_step_loss_ours": ours_loss, "first_step_loss_reference": ref_loss,
        "first_step_loss_rel_diff": rel, "reference_dropout": 0.0,
        "loss_chunk": args.loss_chunk,
        "notes": "PyTorch GPT-2 dropout set to 0 (ours has none); PyTorch computes logits at "
                 "all prefix+caption positions, ours at caption positions only; FLOPs (the "
                 "reference's work, for both) = 6*N_blocks*B*T + 6*width*vocab*B*T + "
                 "12*depth*T^2*width*B + 6*N_mapper*B",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{jax.devices()[0].device_kind}",
        "load_average_1min": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
