"""Captions/s of our batched, jitted greedy decoding (KV cache) for a prefix-fed GPT-2.

References, with the same GPT-2 small weights (random, torch.manual_seed(0), loaded into
ours through from_pretrained) and the same prefixes (10 random embeddings, std 0.1):
  (a) the ClipCap reference's algorithm: transformers GPT2LMHeadModel, one caption at a
      time, a full forward over prefix + generated token embeddings for every new token
      (no KV cache), argmax; measured on --ref_captions captions;
  (b) transformers ``generate(inputs_embeds=..., do_sample=False, use_cache=True)``, batched.
Every side generates exactly --tokens new tokens: no stop token fires (our stop_ids is
empty, the reference loop's '.' stop and generate's EOS are switched off), so the work is
equal. PyTorch in eval() under torch.no_grad() with its default threads; warm-up excluded;
the sides are timed in turn, --rounds calls each, and each side's median call counts.
Prints the token agreement, then one JSON line per comparison (with the 1-minute load
average: PyTorch's threads slow down many times over when other processes share the cores),
with each side's matmul GFLOP/s and its fraction of the 2048^2 matmul peak measured in the
same run: ours and ``generate`` do the same matmuls (a KV cache, the LM head on the last
position only), the reference loop recomputes every position and its logits per token.
``--smoke``: a 2-layer, 32-wide GPT-2, 4 captions of 3 tokens, through the same code
(seconds; the test suite runs it).
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.timing import matmul_peak_flops
from c3_jax.models import decoding, gpt2

# --smoke: the sizes (and the tiny GPT-2) of the test suite's run of this benchmark.
SMOKE = dict(batch=4, ref_captions=2, prefix_length=2, tokens=3, rounds=1)
SMOKE_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16)


def _interleaved_rates(fns: dict, counts: dict, rounds: int) -> dict:
    """Captions/s per side: median over rounds that time each side once in turn (so load
    from other processes falls on all sides alike); warm-up excluded."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: counts[name] / float(np.median(t)) for name, t in times.items()}


def _agreement(ours: np.ndarray, theirs: np.ndarray, name: str) -> float:
    """Prints and returns the fraction of equal tokens between two [N, T] token arrays."""
    same = ours == theirs
    print(f"token agreement, ours vs {name}: {same.mean():.3f} of tokens, "
          f"{int(same.all(1).sum())}/{len(same)} captions identical")
    return float(same.mean())


def token_flops(config: gpt2.GPT2Config) -> tuple:
    """Matmul FLOPs per position of GPT-2's blocks (q, k, v, out and the MLP; attention's
    own products, under 2 % here, left out) and of its LM head."""
    mlp = config.mlp_dim or 4 * config.width
    blocks = 2 * config.depth * (4 * config.width ** 2 + 2 * config.width * mlp)
    return blocks, 2 * config.width * config.vocab_size


def cached_decode_flops(config, prefix: int, tokens: int) -> float:
    """One caption decoded with a KV cache: the prompt's positions through the blocks, the
    head on its last one, then ``tokens - 1`` new positions with the head (ours, generate)."""
    blocks, head = token_flops(config)
    return prefix * blocks + head + (tokens - 1) * (blocks + head)


def recomputing_decode_flops(config, prefix: int, tokens: int) -> float:
    """The reference loop's caption: every new token runs all positions so far, with logits."""
    blocks, head = token_flops(config)
    return sum((prefix + t) * (blocks + head) for t in range(tokens))


def reference_caption(model, prefix, tokens: int, stop_id=None) -> list:
    """The reference's greedy loop for one caption [1, P, D]: no cache, argmax, stop at stop_id."""
    import torch
    embeds, out = prefix, []
    with torch.no_grad():
        for _ in range(tokens):
            token = model(inputs_embeds=embeds).logits[:, -1].argmax(-1)
            out.append(int(token))
            if out[-1] == stop_id:
                break
            embeds = torch.cat([embeds, model.transformer.wte(token)[:, None]], 1)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32, help="captions per batch (ours, generate)")
    p.add_argument("--ref_captions", type=int, default=4, help="captions for the reference loop")
    p.add_argument("--prefix_length", type=int, default=10)
    p.add_argument("--tokens", type=int, default=20, help="new tokens per caption")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per side, interleaved")
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}, "
                        f"GPT-2 {SMOKE_GPT2}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    import torch
    import transformers
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(  # GPT-2 small
        **(SMOKE_GPT2 if args.smoke else {}))).eval()
    ref.generation_config.eos_token_id = None  # no early stop: fixed work
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        module, params = gpt2.from_pretrained(d)
    width = module.config.width
    prefix = (0.1 * np.random.default_rng(0).normal(size=(args.batch, args.prefix_length, width))
              ).astype(np.float32)
    x, tx = jnp.asarray(prefix), torch.tensor(prefix)

    ours_fn = lambda: decoding.greedy(module, params, prompt_embeds=x, max_new_tokens=args.tokens,
                                      stop_ids=(), pad_id=0).block_until_ready()

    mask = torch.ones(tx.shape[:2], dtype=torch.long)

    def generate():
        with torch.no_grad():
            return ref.generate(inputs_embeds=tx, attention_mask=mask, max_new_tokens=args.tokens,
                                do_sample=False, use_cache=True, pad_token_id=0)

    loop = lambda: [reference_caption(ref, tx[i:i + 1], args.tokens)
                    for i in range(args.ref_captions)]

    ours_tokens = np.asarray(ours_fn())
    loop_tokens, gen_tokens = np.array(loop()), generate().numpy()
    assert gen_tokens.shape == ours_tokens.shape, (gen_tokens.shape, ours_tokens.shape)
    n = args.ref_captions
    agree_loop = _agreement(ours_tokens[:n], loop_tokens, "the reference loop")
    agree_gen = _agreement(ours_tokens, gen_tokens, "generate")

    rates = _interleaved_rates({"ours": ours_fn, "loop": loop, "generate": generate},
                               {"ours": args.batch, "loop": n, "generate": args.batch},
                               args.rounds)
    ours, loop_rate, gen_rate = rates["ours"], rates["loop"], rates["generate"]
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    cached = cached_decode_flops(module.config, args.prefix_length, args.tokens)
    recomputed = recomputing_decode_flops(module.config, args.prefix_length, args.tokens)
    use = lambda rate, flops: {"gflops": rate * flops / 1e9,
                               "fraction_of_peak": rate * flops / peak}
    common = {"name": "caption_decode_greedy", "ours": ours, "unit": "captions/s",
              "batch": args.batch, "prefix_length": args.prefix_length,
              "new_tokens": args.tokens, "rounds": args.rounds, "smoke": args.smoke,
              "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                         f"{jax.devices()[0].device_kind}",
              "matmul_peak_gflops": peak / 1e9, "ours_side": use(ours, cached),
              "load_average_1min": os.getloadavg()[0]}
    print(json.dumps({**common, "reference_name": "clipcap_loop_torch_no_cache_batch1",
                      "reference": loop_rate, "ratio": ours / loop_rate,
                      "reference_captions": n, "token_agreement": agree_loop,
                      "reference_side": use(loop_rate, recomputed)}))
    print(json.dumps({**common, "reference_name": "transformers_generate_kv_cache_batched",
                      "reference": gen_rate, "ratio": ours / gen_rate,
                      "token_agreement": agree_gen, "reference_side": use(gen_rate, cached)}))


if __name__ == "__main__":
    main()
