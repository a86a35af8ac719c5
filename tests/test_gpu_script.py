"""benchmarks/gpu.sh refuses clearly where no GPU is visible (before installing anything),
and benchmarks/gpu/report.py turns benchmark lines into throughput and MFU. Runs on CPU in
seconds: a stand-in nvidia-smi decides what is visible, and a stand-in Python (which fails
if called for anything but the backend check) guarantees nothing is installed."""
import importlib.util
import json
import os
import subprocess
import types

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.sh")
H100_LINE = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"


def load_report():
    """benchmarks/gpu/report.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "gpu_report", os.path.join(ROOT, "benchmarks", "gpu", "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def executable(path, text: str) -> str:
    """Writes a shell script at ``path`` and makes it executable."""
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return str(path)


def run_script(tmp_path, nvidia_smi: str, python: str = "exit 97\n", **env):
    """gpu.sh with a stand-in nvidia-smi and Python first on PATH, folders under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "nvidia-smi", nvidia_smi)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "OUT": str(tmp_path / "out"), "C3_GPU_WORK": str(tmp_path / "work"),
           "C3_GPU_VENV": str(tmp_path / "venv"), "PIP_NO_INDEX": "1",
           "C3_GPU_PYTHON": executable(tmp_path / "python", python), **env}
    env.pop("GPU_SH_SMOKE", None)
    return subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def assert_nothing_written(tmp_path):
    for name in ("out", "work", "venv"):
        assert not (tmp_path / name).exists(), name


def test_refuses_when_nvidia_smi_finds_no_gpu(tmp_path):
    out = run_script(tmp_path, "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert out.returncode == 2
    assert out.stderr.startswith("error: no GPU visible") and out.stderr.count("\n") == 1
    assert out.stdout == ""
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_refuses_when_cuda_visible_devices_hides_the_gpus(tmp_path, hidden):
    out = run_script(tmp_path, f"echo '{H100_LINE}'\n", CUDA_VISIBLE_DEVICES=hidden)
    assert out.returncode == 2 and out.stderr.startswith("error: no GPU visible")
    assert_nothing_written(tmp_path)


def test_stops_when_jax_sees_no_gpu(tmp_path):
    """A visible GPU but a JAX without CUDA: one clear line, no benchmark run."""
    out = run_script(tmp_path, f"echo '{H100_LINE}'\n", python="echo cpu\n")
    assert out.returncode == 1
    assert "GPU: NVIDIA H100 80GB HBM3" in out.stdout
    assert out.stderr.startswith("error: JAX in ") and "backend: cpu" in out.stderr
    assert_nothing_written(tmp_path)


def test_bf16_peaks():
    report = load_report()
    assert report.bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert report.bf16_peak_flops("NVIDIA H200") == 989e12
    assert report.bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert report.bf16_peak_flops("cpu") is None


def test_vit_b32_flops():
    """ViT-B/32 at 224 px: 4.41 G multiply-adds (the published figure), 2 FLOPs each."""
    flops = load_report().vit_image_flops(768, 12, 3072, 224, 32, 512)
    assert flops == pytest.approx(2 * 4.41e9, rel=2e-3)


def test_train_record_mfu():
    report = load_report()
    line = {"ours": 1000.0, "ours_step_s": 0.256, "batch": 256, "tokens": 30,
            "gflop_per_step": 5000.0, "dtype": "bfloat16"}
    record = report.train_record([line], 989e12)
    assert record["mfu"] == pytest.approx(5000e9 / 0.256 / 989e12)
    assert record["tokens_per_s"] == pytest.approx(256 * 30 / 0.256)
    assert report.train_record([line], None)["mfu"] is None


def test_report_writes_one_json_with_the_error_of_a_failed_command(tmp_path):
    report = load_report()
    log = tmp_path / "log"
    log.write_text("step 1\nTraceback\nValueError: boom\n")
    rc = report.main(["train", "caption_train", str(log), "--out", str(tmp_path / "out"),
                      "--device", "NVIDIA H100 80GB HBM3", "--returncode", "1", "--wall", "3"])
    assert rc == 1
    record = json.loads((tmp_path / "out" / "caption_train.json").read_text())
    assert record["error"] == "exit status 1" and record["log_tail"][-1] == "ValueError: boom"
    assert record["bf16_peak_tflops"] == 989.0


def test_report_of_a_decode_line(tmp_path):
    report = load_report()
    line = {"ours": 500.0, "batch": 256, "new_tokens": 20, "ours_side": {"gflops": 9890.0},
            "machine": "x86_64, 16 cores, NVIDIA H200"}
    args = types.SimpleNamespace(device="cpu", returncode=0, wall=1.0, workdir=None, skipped="")
    record = report.build_record("decode", "caption_decode", json.dumps(line), args)
    assert record["device"] == "NVIDIA H200" and record["mfu"] == pytest.approx(0.01)


def test_report_of_a_skipped_command(tmp_path):
    report = load_report()
    rc = report.main(["main", "main_quick", "-", "--out", str(tmp_path), "--skipped", "no java"])
    record = json.loads((tmp_path / "main_quick.json").read_text())
    assert rc == 0 and record["skipped"] == "no java" and "throughput" not in record
