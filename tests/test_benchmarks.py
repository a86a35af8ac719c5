"""Every benchmark in benchmarks/ runs at its --smoke size (the same code path at a tiny
size, PyTorch references included) and ends with well-formed comparison lines, so that a
benchmark broken by a library change fails the suite. No timing is asserted: the numbers of
a smoke run on a shared machine mean nothing."""
import glob
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import CACHE_ENV, FAST_COMPILE, ROOT

BENCHMARKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
KEYS = ("name", "reference_name", "ours", "reference", "unit", "ratio")


def run_smoke(script: str) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> --smoke`` on one CPU device, with the tests' compile
    flags and compilation cache (the environment's other JAX/XLA settings left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu", **CACHE_ENV)
    return subprocess.run([sys.executable, os.path.join("benchmarks", script), "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def comparison_lines(stdout: str) -> list:
    """The JSON objects printed one per line."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def positive_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def test_every_benchmark_is_a_script_with_a_smoke_size():
    assert "caption_train.py" in BENCHMARKS and len(BENCHMARKS) >= 10
    for script in BENCHMARKS:
        with open(os.path.join(ROOT, "benchmarks", script)) as f:
            text = f.read()
        assert '"--smoke"' in text and 'if __name__ == "__main__":' in text, script


@pytest.mark.parametrize("script", BENCHMARKS)
@pytest.mark.slow
def test_smoke_run_prints_its_comparisons(script):
    out = run_smoke(script)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = comparison_lines(out.stdout)
    assert lines, f"no JSON line in the output of {script}:\n{out.stdout[-2000:]}"
    for line in lines:
        assert set(KEYS) <= line.keys(), (script, sorted(line))
        assert line["smoke"] is True, script
        for key in ("name", "reference_name", "unit"):
            assert isinstance(line[key], str) and line[key], (script, key)
        for key in ("ours", "reference", "ratio"):
            assert positive_number(line[key]), (script, key, line[key])
        assert line["ratio"] == pytest.approx(line["ours"] / line["reference"], rel=1e-6), script
    names = [(line["name"], line["reference_name"]) for line in lines]
    assert len(set(names)) == len(names), names  # one line per comparison
