"""Several JAX processes train exactly like one: the captioner on the tiny fake COCO of
test_captioning with 2 processes x 2 CPU devices and fsdp=2 (jax.distributed on 127.0.0.1,
gloo collectives) gives the losses, parameters and captions of 1 process x 2 devices, also
from a checkpoint written with one process (1 x 2 devices); the generator, extraction and
the built-in world's jobs likewise."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from c3_jax import runner
from c3_jax.train import checkpoints
from conftest import (CACHE_ENV, CAPTION_REFERENCE, FAST_COMPILE, ROOT, assert_same_numbers,
                      copy_world, launch_local, mtimes, numbers, override)
from configs import shapes_t2i

STEPS = CAPTION_REFERENCE["captioner"]["max_steps"]
THIRD = CAPTION_REFERENCE["captioner"]["checkpoint_every"]
DEVICES = 2  # 1 process x 2 devices is the reference of 2 processes x 1

_SCRIPT = textwrap.dedent("""
    import json, sys
    import ml_collections
    from absl import logging
    from c3_jax import runner
    logging.set_verbosity(logging.INFO)
    config = ml_collections.ConfigDict(json.loads(open(sys.argv[1]).read()))
    try:
        runner.run(config, sys.argv[2])
    finally:
        import jax
        print(f"RAN AS process {jax.process_index()} of {jax.process_count()} with "
              f"{jax.local_device_count()} of {jax.device_count()} devices", flush=True)
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config, workdir: str, processes: int, cli: str = "",
            devices: int = DEVICES) -> list:
    """Runs ``config`` in ``workdir`` as ``processes`` JAX processes sharing ``devices`` CPU
    devices on this machine; returns [(exit code, log)] per process. With ``cli`` (a config
    file) each process is ``python -m c3_jax.main`` with the coordinator flags and ``config`` as
    --config.* overrides; otherwise a script given the JAX_* variables."""
    path = workdir + f".{processes}p.json"
    with open(path, "w") as f:
        json.dump(config.to_dict(), f)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **CACHE_ENV,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes} "
                         f"{FAST_COMPILE}")
    procs = []
    for p in range(processes):
        command, process_env = [sys.executable, "-c", _SCRIPT, path, workdir], env
        if cli:
            command = [sys.executable, "-m", "c3_jax.main", f"--config={cli}", "--verbosity=0",
                       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in config.items()
                                                 if k != "experiment")]
            if processes > 1:
                command += [f"--coordinator_address=127.0.0.1:{port}",
                            f"--num_processes={processes}", f"--process_id={p}"]
        elif processes > 1:
            process_env = {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                           "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(p)}
        log = open(f"{workdir}.{processes}p.{p}.log", "w+")
        procs.append((subprocess.Popen(command, env=process_env, cwd=ROOT, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    try:  # until all exit, or one fails (the others would wait for it in a collective)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc, _ in procs]
            if None not in codes or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.5)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    out = []
    for proc, log in procs:
        log.seek(0)
        out.append((proc.returncode, log.read()))
        log.close()
    return out


def _ok(results: list) -> None:
    for p, (rc, log) in enumerate(results):
        assert rc == 0, f"process {p} exited {rc}:\n{log[-4000:]}"


def _params(workdir, keys=("params",)) -> tuple:
    """The latest checkpoint's ``keys`` (saved by any number of processes) and its step."""
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest")) as mngr:
        step = mngr.latest_step()
    path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata)
    state = checkpointer.restore(path, target)
    return jax.tree.map(np.asarray, {k: state[k] for k in keys}), step


def _losses(workdir, key="loss") -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def _assert_same_run(got_dir, want_dir) -> None:
    for key, count in (("loss", STEPS), ("val_loss", STEPS // THIRD)):
        np.testing.assert_allclose(_losses(got_dir, key), _losses(want_dir, key), rtol=1e-5)
        assert len(_losses(got_dir, key)) == count, key
    _assert_same_params(got_dir, want_dir)


def _assert_same_params(got_dir, want_dir, keys=("params",)) -> None:
    (want, want_step), (got, got_step) = _params(want_dir, keys), _params(got_dir, keys)
    assert want_step == got_step == STEPS
    leaves = jax.tree.leaves_with_path(want)
    assert len(leaves) == len(jax.tree.leaves(got))
    for (path, a), b in zip(leaves, jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def config(caption_reference):
    """The captioner reference's config (validation on every process; 'best' checkpoints
    saved alongside 'latest' ones), METEOR off (each process would start its JVM)."""
    return override(caption_reference[0], eval={"meteor": False})


@pytest.fixture(scope="module")
def one_process(caption_reference):
    """The reference: 1 process x 2 devices (run once per test session)."""
    return str(caption_reference[1])


@pytest.mark.slow
def test_one_process_then_two_with_fsdp_train_and_evaluate_like_one(config, one_process,
                                                                    tmp_path, monkeypatch):
    """fsdp=2, 1 process x 2 devices (this one) to the second checkpoint, then 2 processes x 2 devices
    from it to the end and evaluation (the batch split over the processes and the devices,
    the parameters over each process's 2 devices): the losses, validation losses,
    parameters and captions of the reference (1 process x 2 devices, fsdp=1). A checkpoint
    written by one process count is restored by another (the sharded restore of several
    processes), the last one is written by 2 processes, process 0 alone writes the outputs
    and evaluation gathers every process's captions."""
    workdir, config = str(tmp_path / "run"), override(config, captioner={"fsdp": 2})
    save = checkpoints.Checkpoints.save

    def save_then_stop(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == 2 * THIRD:
            self.wait()
            raise RuntimeError("stopped")
    assert jax.process_count() == 1 and jax.device_count() == 2  # this test process
    with monkeypatch.context() as m:
        m.setattr(checkpoints.Checkpoints, "save", save_then_stop)
        with pytest.raises(RuntimeError, match="stopped"):
            runner.run(config, workdir)
    assert _params(workdir)[1] == 2 * THIRD and not os.path.exists(workdir + "/results.json")
    results = _launch(config, workdir, 2, devices=4)
    _ok(results)
    _assert_same_run(workdir, one_process)
    with open(os.path.join(workdir, "results.json")) as f:
        got = json.load(f)
    with open(os.path.join(one_process, "results.json")) as f:
        want = json.load(f)
    assert got["steps"] == STEPS and got["num_test"] == want["num_test"] == 2
    assert got["resumed_from"] == 2 * THIRD
    with open(os.path.join(workdir, "captions_test.json")) as f:
        captions = json.load(f)
    with open(os.path.join(one_process, "captions_test.json")) as f:
        assert captions == json.load(f)
    for p, (_, log) in enumerate(results):
        assert f"RAN AS process {p} of 2 with 2 of 4 devices" in log


@pytest.mark.slow
def test_generator_trains_alike_on_two_processes_with_fsdp(t2i_reference, tmp_path):
    """The generator reference, 1 process x 2 devices (the batch split over them), against
    2 processes x 2 devices with generator.fsdp=2 (the batch split over the processes and
    the devices, the parameters over each process's 2 devices): the same losses, parameters
    and images."""
    config, one = t2i_reference
    steps, one, two = config.generator.max_steps, str(one), str(tmp_path / "two")
    _ok(_launch(override(config, generator={"fsdp": 2}), two, 2, devices=4))
    keys = ("d_adv", "g_adv", "g_itd", "g_itc", "r1")
    want_params, want_step = _params(one, ("g_params", "d_params", "ema"))
    for key in keys:  # every step logs every key
        assert len(_losses(one, key)) == steps, key
        np.testing.assert_allclose(_losses(two, key), _losses(one, key), rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    got, step = _params(two, ("g_params", "d_params", "ema"))
    assert step == want_step == steps
    for (path, a), b in zip(jax.tree.leaves_with_path(want_params), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    images = np.load(os.path.join(two, "generated_test.npy")).astype(int)
    assert np.abs(images - np.load(os.path.join(one, "generated_test.npy")).astype(int)).max() <= 1


@pytest.mark.slow
def test_extraction_writes_one_shard_per_process_of_one_dataset(caption_world, tmp_path):
    """2 processes x 1 device, started through the command line's coordinator flags, each
    encode their half of every split and write it as their shard; the dataset reads back as
    the one the 1-process extraction (the fixture) wrote."""
    from c3_jax import embed
    from c3_jax.data import builders
    from configs import coco_extract
    root, data_dir = caption_world["root"], tmp_path / "data"
    config = coco_extract.get_config()
    config.update(clip=str(root / "clip"), annotations=str(root / "coco" / "dataset_coco.json"),
                  image_root=str(root / "coco"), data_dir=str(data_dir), batch_size=4,
                  image_size=16)
    results = _launch(config, str(tmp_path / "extract"), 2, cli="configs/coco_extract.py")
    _ok(results)
    for p, (_, log) in enumerate(results):
        assert f"process {p} of 2, {DEVICES // 2} local / {DEVICES} global devices" in log
        assert f"process {p} of 2 wrote rows {6 * p}..{6 * (p + 1)} of coco_karpathy_clip/train" \
            in log, log[-3000:]
    got_dir = str(data_dir / "coco_karpathy_clip" / "1.0.0")
    for split, n in (("train", 12), ("val", 2), ("test", 2)):
        shards = sorted(f for f in os.listdir(got_dir) if f"-{split}.array_record" in f)
        assert shards == [f"coco_karpathy_clip-{split}.array_record-0000{p}-of-00002"
                          for p in range(2)]
        got = builders.data_source(got_dir, split)
        want = builders.data_source(caption_world["dataset"], split)
        assert len(got) == len(want) == n
        for i in range(n):
            a, b = got[i], want[i]
            assert a["index"] == i and a["image_id"] == b["image_id"]
            assert list(a["caption"]) == list(b["caption"])
            for key in ("image_embedding", "text_embedding"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
        paths = embed.karpathy_split(config.annotations)[split]
        np.testing.assert_array_equal(
            np.stack([got[i]["image"] for i in range(n)]),
            embed.square_images([str(root / "coco" / p) for p, _, _ in paths], 16))


@pytest.mark.slow
def test_shapes_t2i_gives_the_figures_of_one_process_on_two(quick_main_job, tmp_path):
    """The README's own example, launch/local_multiprocess.sh, on ``shapes_t2i:quick``:
    2 processes x 1 CPU device give the figures of 1 process x 2 (this test process; the
    sweep's generators split over the devices: over the processes). Both start from the
    main job's world and Connect (copied and reused; 1 process built them): the main job's
    twin in test_shapes_runs builds world and Connect on 2 processes."""
    config = override(shapes_t2i.get_config("quick"), sweep={"variants": ("c1", "c3")})
    for run in ("run1", "run2"):
        copy_world(quick_main_job[1], tmp_path / run)
    runner.run(config, str(tmp_path / "run1"))
    out = launch_local(2, "configs/shapes_t2i.py:quick", tmp_path / "run2", tmp_path / "logs",
                       "--config.sweep.variants=c1,c3")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    for run in ("run1", "run2"):
        assert mtimes(tmp_path / run, "connect") == mtimes(quick_main_job[1], "connect")
    results = {p: numbers(json.loads((tmp_path / f"run{p}" / "results.json").read_text()))
               for p in (1, 2)}
    for run in ("run1", "run2"):
        for output in ("RESULTS.md", "samples.png", "config.json"):
            assert (tmp_path / run / output).exists(), (run, output)
    assert {k.split("/")[2] for k in results[1] if k.startswith("/variants/")} == {"c1", "c3"}
    accuracy = [v for k, v in results[1].items() if k.startswith("/variants")
                and "/attribute_accuracy/" in k and v is not None]  # None: the std of 1 seed
    assert accuracy and all(0 <= v <= 1 for v in accuracy)
    readout = {k: v for k, v in results[1].items() if k.startswith("/condition_readout/")}
    assert {k.split("/")[2] for k in readout} == {"image_embedding", "text_embedding"}
    assert all(v is None or 0 <= v <= 1 for v in readout.values())  # None: NaN, no val row
    assert_same_numbers(results[2], results[1])


_ON_PROCESS_ZERO = textwrap.dedent("""
    import jax
    from c3_jax import parallel
    parallel.maybe_initialize_distributed()
    calls = []

    def scores():
        calls.append(1)
        return {"c3": {"BLEU-1": 0.1 + jax.process_index(), "METEOR_skipped": "disabled"}}
    print("VALUE", parallel.on_process_zero(scores), len(calls), flush=True)

    def fails():
        raise ValueError("no java")
    try:
        parallel.on_process_zero(fails)
    except Exception as e:
        print("RAISED", type(e).__name__, e, flush=True)
""")


@pytest.mark.slow
def test_host_work_of_process_zero_reaches_every_process():
    """``parallel.on_process_zero``: process 0 alone computes the value (the caption metrics:
    one METEOR JVM, not one per process) and every process gets it; an exception in process
    0 is raised there as it is and in the others with its message, so that none waits."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
    procs = [subprocess.Popen([sys.executable, "-c", _ON_PROCESS_ZERO], cwd=ROOT,
                              env={**env, "JAX_PROCESS_ID": str(p)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in range(2)]
    try:
        logs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:  # a process left waiting for the other is not left behind
        for proc in procs:
            proc.kill()
    for p, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, log[-3000:]
        value = "{'c3': {'BLEU-1': 0.1, 'METEOR_skipped': 'disabled'}}"
        assert f"VALUE {value} {1 - p}" in log, log[-3000:]  # computed by process 0 alone
        raised = ("RAISED ValueError no java" if p == 0 else
                  "RAISED RuntimeError process 0 failed: ValueError: no java")
        assert raised in log, log[-3000:]
