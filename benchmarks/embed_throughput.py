"""Images/s of our Flax CLIP image tower vs transformers.CLIPModel (PyTorch), same config.

ViT-B/32 with random weights (the architecture is what costs time), float32, the same
batch of 224x224 images on both sides, warm-up excluded; PyTorch in eval() under
torch.no_grad() with its default threads. Our weights are the PyTorch model's, loaded
through from_pretrained, and the features are checked to match before timing.
Prints one JSON line per comparison. ``--smoke``: a 2-layer, 32-wide tower on 32x32 images,
through the same code (seconds; the test suite runs it).
"""
import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.timing import matmul_peak_flops
from c3_jax.models import clip

# --smoke: the sizes (and the tiny CLIP) of the test suite's run of this benchmark.
SMOKE = dict(batch=2, seconds=0.05)
SMOKE_CLIP = dict(
    text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                     num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0,
                     eos_token_id=1, pad_token_id=1),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                       num_hidden_layers=2, image_size=32, patch_size=8),
    projection_dim=16)


def _rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up (and compile)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 2:
        fn()
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}, "
                        f"CLIP {SMOKE_CLIP}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    import torch
    import transformers
    torch.manual_seed(0)
    config = SMOKE_CLIP if args.smoke else dict(vision_config={"patch_size": 32})
    ref = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()  # ViT-B/32 defaults
    size = ref.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        module, params = clip.from_pretrained(d)
    pixels = np.random.default_rng(0).normal(size=(args.batch, 3, size, size)).astype(np.float32)
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode_image"))
    x = jnp.asarray(pixels)
    tx = torch.tensor(pixels)

    def theirs():
        with torch.no_grad():
            out = ref.get_image_features(pixel_values=tx)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    diff = float(np.abs(np.asarray(encode(params, x)) - theirs().numpy()).max())
    assert diff < 1e-3, f"features differ by {diff}"
    ours = _rate(lambda: encode(params, x).block_until_ready(), args.batch, args.seconds)
    reference = _rate(theirs, args.batch, args.seconds)
    print(json.dumps({
        "name": "clip_vit_b32_image_features_flax_jit",
        "reference_name": "transformers_clipmodel_torch",
        "ours": ours, "reference": reference, "unit": "images/s", "ratio": ours / reference,
        "batch": args.batch, "max_abs_feature_diff": diff, "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops": matmul_peak_flops(256 if args.smoke else 2048) / 1e9,
        "device": jax.devices()[0].device_kind, "image_size": size, "smoke": args.smoke,
    }))


if __name__ == "__main__":
    main()
