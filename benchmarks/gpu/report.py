"""One JSON per benchmark of the GPU run (benchmarks/gpu.sh): throughput and MFU.

MFU = the FLOP/s a benchmark reaches ÷ the dense bfloat16 peak of the GPU it ran on
(NVIDIA's datasheet figures, table below; sparsity not counted). FLOPs per unit of work:
  * caption_train: the benchmark's own ``gflop_per_step`` (its ``train_flops``), over its
    median step time;
  * caption_decode: the benchmark's own ``ours_side.gflops`` (matmul FLOPs of a KV-cached
    greedy decode);
  * embed_throughput: ``vit_image_flops`` below (2 FLOPs per multiply-add: ViT-B/32 at 224
    px is 4.41 G multiply-adds, 8.82 GFLOP per image);
  * main: none (the built-in world's models are 32-64 wide: their MFU means nothing), so
    its JSON gives steps/s and captions/s alone.
Decoding and embedding compute in float32: their MFU against the bf16 peak is a lower
bound of what bf16 would reach.

    python benchmarks/gpu/report.py KIND NAME LOG --out DIR [--device NAME]
        [--returncode RC] [--wall S] [--workdir DIR] [--skipped REASON]
    (KIND: train, decode, embed, main)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

# Dense bfloat16 tensor-core peaks, TFLOP/s, by a substring of the device name (first match).
BF16_DENSE_PEAK_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0),
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("A100", 312.0),
)


def bf16_peak_flops(device: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``device``, or None if not in the table."""
    for key, tflops in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in device.lower():
            return tflops * 1e12
    return None


def json_lines(text: str) -> list:
    """The JSON objects a benchmark printed, one per line."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def vit_image_flops(width: int, depth: int, mlp: int, image: int, patch: int,
                    projection: int, channels: int = 3) -> float:
    """FLOPs of one image through a CLIP ViT image tower (patch embedding, blocks'
    q/k/v/out, MLP and attention products, projection), 2 per multiply-add."""
    patches = (image // patch) ** 2
    tokens = patches + 1  # + class token
    embed = patches * channels * patch * patch * width
    block = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    return 2.0 * (embed + depth * block + width * projection)


def embed_flops(smoke: bool) -> float:
    """FLOPs per image of embed_throughput's tower: ViT-B/32 at 224 px, or its smoke tower."""
    if not smoke:
        return vit_image_flops(768, 12, 3072, 224, 32, 512)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from embed_throughput import SMOKE_CLIP
    v = SMOKE_CLIP["vision_config"]
    return vit_image_flops(v["hidden_size"], v["num_hidden_layers"], v["intermediate_size"],
                           v["image_size"], v["patch_size"], SMOKE_CLIP["projection_dim"])


def with_mfu(record: dict, flops_per_s: float, peak: float | None) -> dict:
    """The record with the reached TFLOP/s and its MFU (None where the peak is unknown)."""
    return {**record, "tflops": flops_per_s / 1e12,
            "mfu": None if peak is None else flops_per_s / peak}


def train_record(lines: list, peak: float | None) -> dict:
    """caption_train's line: captions/s and tokens/s of our step, MFU from its FLOPs/step."""
    line = lines[-1]
    step_s = line["ours_step_s"]
    record = {"throughput": line["ours"], "unit": "captions/s",
              "tokens_per_s": line["batch"] * line["tokens"] / step_s, "step_s": step_s,
              "batch": line["batch"], "dtype": line["dtype"],
              "flops_basis": "caption_train gflop_per_step / median step time"}
    return with_mfu(record, line["gflop_per_step"] * 1e9 / step_s, peak)


def decode_record(lines: list, peak: float | None) -> dict:
    """caption_decode's lines: our captions/s, MFU from our side's matmul FLOP/s."""
    line = lines[0]
    record = {"throughput": line["ours"], "unit": "captions/s", "batch": line["batch"],
              "new_tokens": line["new_tokens"], "dtype": "float32",
              "flops_basis": "caption_decode ours_side.gflops (KV-cached matmuls)"}
    return with_mfu(record, line["ours_side"]["gflops"] * 1e9, peak)


def embed_record(lines: list, peak: float | None) -> dict:
    """embed_throughput's line: our images/s, MFU from the tower's FLOPs per image."""
    line = lines[-1]
    per_image = embed_flops(line["smoke"])
    record = {"throughput": line["ours"], "unit": "images/s", "batch": line["batch"],
              "dtype": "float32", "gflop_per_image": per_image / 1e9,
              "flops_basis": "vit_image_flops per image x images/s"}
    return with_mfu(record, line["ours"] * per_image, peak)


def steady_step_s(metrics_path: str) -> float | None:
    """Median ``time/step`` over a metrics.jsonl's logged steps after the first (compile)."""
    with open(metrics_path) as f:
        times = [r["time/step"] for r in map(json.loads, f) if "time/step" in r]
    times = times[1:] or times
    return statistics.median(times) if times else None


def main_record(workdir: str) -> dict:
    """The main job's run: wall time, Connect pairs/s and the captioner sweep's captions/s."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    record = {"run_wall_time_s": results.get("wall_time_s"), "workdir": workdir,
              "unit": "captions/s", "mfu": None,
              "mfu_note": "not computed: the built-in world's models are too small for MFU"}
    connect = os.path.join(workdir, "connect", "metrics.jsonl")
    if os.path.exists(connect) and steady_step_s(connect):
        record["connect_pairs_per_s"] = config["connect"]["batch"] / steady_step_s(connect)
    sweeps = sorted(glob.glob(os.path.join(workdir, "captioners", "*", "metrics.jsonl")))
    if sweeps and steady_step_s(sweeps[0]):
        step_s = steady_step_s(sweeps[0])
        variants = config["sweep"]["variants"]  # a tuple: a list in the JSON
        if isinstance(variants, str):
            variants = variants.split(",")
        members = len(variants) * config["sweep"]["seeds"]
        record.update(captioner_step_s=step_s, members=members,
                      captioner_steps=config["captioner"]["max_steps"],
                      throughput=members * config["captioner"]["batch_size"] / step_s)
    return record


def device_kind(lines: list, fallback: str) -> str:
    """The device the benchmark reports (its 'device', or the last part of 'machine')."""
    for line in lines:
        if "device" in line:
            return line["device"]
        if "machine" in line:
            return line["machine"].split(", ")[-1]
    return fallback


def summary(name: str, record: dict) -> str:
    """One line for the console."""
    if "error" in record:
        return f"{name}: FAILED ({record['error']})"
    if "skipped" in record:
        return f"{name}: SKIPPED ({record['skipped']})"
    mfu = record.get("mfu")
    mfu_text = "MFU n/a" if mfu is None else f"MFU {100 * mfu:.1f} % of bf16 peak"
    rate = record.get("throughput")
    rate_text = "no rate" if rate is None else f"{rate:.4g} {record['unit']}"
    return f"{name}: {rate_text}, {mfu_text} ({record['device']})"


RECORDS = {"train": train_record, "decode": decode_record, "embed": embed_record}


def build_record(kind: str, name: str, text: str, args) -> dict:
    """The JSON of one benchmark from its output (or the error that stopped it)."""
    lines = json_lines(text)
    device = device_kind(lines, args.device) if args.device == "cpu" else args.device
    peak = bf16_peak_flops(device)
    record = {"name": name, "kind": kind, "device": device,
              "bf16_peak_tflops": None if peak is None else peak / 1e12,
              "returncode": args.returncode, "wall_s": args.wall}
    if args.skipped:
        return {**record, "skipped": args.skipped}
    if args.returncode != 0:
        tail = text.strip().splitlines()[-5:]
        return {**record, "error": f"exit status {args.returncode}", "log_tail": tail}
    if kind == "main":
        return {**record, **main_record(args.workdir)}
    if not lines:
        return {**record, "error": "no JSON line in its output"}
    return {**record, **RECORDS[kind](lines, peak), "benchmark": lines}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("train", "decode", "embed", "main"))
    p.add_argument("name", help="the JSON's file name, <name>.json")
    p.add_argument("log", help="the benchmark's output")
    p.add_argument("--out", required=True, help="folder for <name>.json")
    p.add_argument("--device", default="cpu", help="the GPU's name (nvidia-smi)")
    p.add_argument("--returncode", type=int, default=0)
    p.add_argument("--wall", type=float, default=None, help="the command's wall seconds")
    p.add_argument("--workdir", default=None, help="kind main: the run's workdir")
    p.add_argument("--skipped", default="", help="why the command was not run (LOG unread)")
    args = p.parse_args(argv)
    text = ""
    if not args.skipped:
        with open(args.log) as f:
            text = f.read()
    record = build_record(args.kind, args.name, text, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(summary(args.name, record))
    return 1 if "error" in record else 0


if __name__ == "__main__":
    sys.exit(main())
