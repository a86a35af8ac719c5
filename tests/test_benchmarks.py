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
import textwrap

import pytest

from conftest import CACHE_ENV, FAST_COMPILE, ROOT

BENCHMARKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
KEYS = ("name", "reference_name", "ours", "reference", "unit", "ratio")


# Runs each script given as ``python <script> --smoke`` would, one after another in one
# process (JAX, PyTorch and transformers imported once, not once per script), and marks where
# each one's output starts and how it ended.
SMOKE_RUNNER = textwrap.dedent("""
    import runpy, sys, traceback
    for script in sys.argv[1:]:
        for stream in (sys.stdout, sys.stderr):
            print(f"=== start {script}", file=stream, flush=True)
        sys.argv, status = [script, "--smoke"], 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (stop.code is not None)
        except BaseException:
            traceback.print_exc()
            status = 1
        for stream in (sys.stdout, sys.stderr):
            print(f"=== end {script} {status}", file=stream, flush=True)
""")


@pytest.fixture(scope="module")
def smoke_runs() -> dict:
    """{script: (exit status, stdout, stderr)} of every benchmark's ``--smoke`` run, on one
    CPU device, with the tests' compile flags and compilation cache (the environment's
    other JAX/XLA settings left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu", **CACHE_ENV)
    scripts = [os.path.join("benchmarks", s) for s in BENCHMARKS]
    out = subprocess.run([sys.executable, "-c", SMOKE_RUNNER, *scripts], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    parts = [sections(text) for text in (out.stdout, out.stderr)]
    return {os.path.basename(s): (parts[0].get(s, (None, ""))[0], parts[0].get(s, (None, ""))[1],
                                  parts[1].get(s, (None, out.stderr[-3000:]))[1])
            for s in scripts}


def sections(text: str) -> dict:
    """{script: (exit status, its lines)} between the smoke runner's marks."""
    out, script, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("=== start "):
            script, lines = line[len("=== start "):], []
        elif line.startswith("=== end ") and script:
            out[script] = (int(line.rsplit(" ", 1)[1]), "\n".join(lines))
            script = None
        elif script:
            lines.append(line)
    return out


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
def test_smoke_run_prints_its_comparisons(script, smoke_runs):
    status, stdout, stderr = smoke_runs[script]
    assert status == 0, stderr[-3000:]
    lines = comparison_lines(stdout)
    assert lines, f"no JSON line in the output of {script}:\n{stdout[-2000:]}"
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
