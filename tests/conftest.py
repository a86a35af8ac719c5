"""Shared test set-up: two CPU devices, one compilation cache for the session, tiny
Hugging Face checkpoints and datasets made here (nothing is downloaded), and the helpers the
end-to-end tests share."""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two host devices so tests can run sharded jitted steps on CPU. The tests' programs are tiny
# and compile-bound, so XLA:CPU compiles fast rather than well: LLVM optimizations off (a
# quarter faster) and the legacy elemental emitters instead of the fusion emitters (XLA
# compile time of a quick main job 5.5 s against 10-12 s). Eigen's matmuls and convolutions
# run on one thread: the two pytest-xdist workers and the processes they start fill the 2
# cores already (the suite took 422 s against 445 and 449 s with Eigen's thread pool).
FAST_COMPILE = ("--xla_backend_optimization_level=0 "  # also for the tests' subprocesses
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, the test processes and the
# subprocesses they start (the same programs compile once): about 3x on the end-to-end
# tests. Its keys hold the program, the devices and the JAX version, so a stale entry is
# never used; C3_TEST_COMPILATION_CACHE= (empty) turns it off.
_CACHE = os.environ.get("C3_TEST_COMPILATION_CACHE", os.path.join(ROOT, ".cache", "jax"))
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# What a test's JAX subprocess keeps of the environment's JAX_* variables: the cache's.
CACHE_ENV = {k: os.environ[k] for k in ("JAX_COMPILATION_CACHE_DIR",
                                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
             if k in os.environ}

import filelock  # noqa: E402  (after the environment above)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from c3_jax import runner  # noqa: E402
from c3_jax.data import builders  # noqa: E402
from c3_jax.eval import caption_metrics  # noqa: E402
from configs import coco_caption, coco_t2i, shapes_caption, shapes_methods  # noqa: E402


WORDS = ["<pad>", "<eos>", "<unk>", "a", "red", "blue", "green", "circle", "square", "star",
         "on", "the", "left", "right"]


def clip_dir(path):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>",
                                                       special_tokens=[("<eos>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                         pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=12,
                         eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=2, image_size=30, patch_size=6),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(config).eval().save_pretrained(path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 30},
                                    crop_size={"height": 30, "width": 30}).save_pretrained(path)


GPT_WORDS = WORDS + ["."]
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def gpt2_dir(path):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(GPT_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                         unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=len(GPT_WORDS), n_positions=32, n_embd=32,
                                     n_layer=2, n_head=4, eos_token_id=1, bos_token_id=1)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)


def _fake_coco(root, n=16):
    """Karpathy-style json + images: a coloured square, captions naming its colour."""
    (root / "images").mkdir(parents=True)
    images = []
    for i in range(n):
        color = list(COLORS)[i % 3]
        img = np.full((36, 36, 3), 128, np.uint8)
        img[8:28, 8:28] = COLORS[color]
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        side = ["left", "right"][i % 2]
        sentences = [f"a {color} square .", f"the {color} square on the {side} .",
                     f"a {color} square on the {side} .", f"the {color} square .",
                     f"a square on the {side} ."]
        split = ["train"] * 10 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2
        images.append({"filepath": "images", "filename": f"{i}.png", "split": split[i],
                       "cocoid": i, "sentences": [{"raw": s} for s in sentences]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))


# The order in which the suite hands whole modules to its pytest-xdist workers (--dist
# loadscope: each module's fixtures are built once; --no-loadscope-reorder: in this order,
# not by their number of tests): the longest first, so that the workers finish within
# seconds of each other instead of one of them running a long module alone at the end, and
# the two first modules build different shared reference runs (test_multiprocess the
# captioner's and the generator's, test_shapes_runs the quick main job's) so that neither
# worker waits for the other's.
LONG_FIRST = ("test_multiprocess", "test_shapes_runs", "test_rerun_safety", "test_gan_sweep",
              "test_captioning", "test_generation", "test_caption_sweep", "test_shapes_probe",
              "test_connect_study", "test_dryrun", "test_stylegan2", "test_image_metrics",
              "test_bad_inputs", "test_caption_metrics", "test_decoding", "test_main",
              "test_models", "test_geometry")


# The day's float32 matmul peak (c3_jax.timing, 2048x2048, in a process of its own with
# JAX's default flags, as the benchmarks measure it), before the tests and after them: the
# suite's time means little without it. Measured by the pytest process alone, not by the
# pytest-xdist workers.
PEAK_SCRIPT = ("from c3_jax.timing import matmul_peak_flops; "
               "print(f'{matmul_peak_flops() / 1e9:.0f}')")


def matmul_peak() -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip() if out.returncode == 0 else "?"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        session.config.c3_peak_before = matmul_peak()


def pytest_terminal_summary(terminalreporter, config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and hasattr(config, "c3_peak_before"):
        terminalreporter.write_line(
            f"float32 matmul peak of this machine (2048x2048, c3_jax.timing): "
            f"{config.c3_peak_before} GFLOP/s before the tests, {matmul_peak()} after")


def pytest_collection_modifyitems(items):
    rank = lambda item: (LONG_FIRST.index(item.module.__name__)
                         if item.module.__name__ in LONG_FIRST else len(LONG_FIRST))
    items.sort(key=rank)  # stable: each module keeps its own order


def shared_once(factory, name: str, build) -> dict:
    """``build(root)``'s dict, made once per test session also when pytest-xdist runs
    several workers: the first to ask builds it under a lock in the session's shared
    temporary directory; the others read what it wrote."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    root, record = base / name, base / f"{name}.json"
    with filelock.FileLock(str(base / f"{name}.lock")):
        if not record.exists():
            root.mkdir(exist_ok=True)
            record.write_text(json.dumps({k: str(v) for k, v in build(root).items()}))
    return {k: (pathlib.Path(v) if k == "root" else v)
            for k, v in json.loads(record.read_text()).items()}


def _build_caption_world(root) -> dict:
    clip_dir(root / "clip")
    gpt2_dir(root / "gpt2")
    _fake_coco(root / "coco")
    out = cli("--config=configs/coco_extract.py", f"--config.clip={root / 'clip'}",
               f"--config.annotations={root / 'coco' / 'dataset_coco.json'}",
               f"--config.image_root={root / 'coco'}", f"--config.data_dir={root / 'data'}",
               "--config.batch_size=8", f"--workdir={root / 'extract'}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((root / "extract" / "results.json").read_text())
    assert results["splits"] == {"train": 12, "val": 2, "test": 2}  # restval in train
    return {"root": root, "dataset": results["dataset_dir"], "gpt2": str(root / "gpt2")}


@pytest.fixture(scope="session")
def caption_world(tmp_path_factory):
    """A tiny fake COCO (coloured squares), extracted by the coco_extract command with a tiny
    CLIP, and a tiny GPT-2: {'root', 'dataset', 'gpt2'}."""
    return shared_once(tmp_path_factory, "caption_world", _build_caption_world)


def override(config, **fields):
    """A copy of ``config`` with ``fields`` changed."""
    config = config.copy_and_resolve_references()
    config.update(fields)
    return config


def snapshot(root) -> dict:
    """Every file under ``root`` with the hash of its bytes."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def mtimes(root, sub: str) -> dict:
    """{file: modification time} of every file under ``root/sub`` (a stage a run reused
    keeps them; ``copy_world`` copies them)."""
    base = os.path.join(root, sub)
    return {k: os.path.getmtime(os.path.join(base, k)) for k in snapshot(base)}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "c3_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def tiny_connect(wd):
    """A tiny CLIP for the quick main job's world (built in ``wd``) and the world's tokenized
    (image, caption) pairs: (model, pairs), for tests of Connect's training loop."""
    from c3_jax.data import captions as cd
    from c3_jax.world import common
    config = shapes_caption.get_config("quick")
    world = common.world_dataset(config, wd)
    tokenizer = common.world_tokenizer(world, wd, {})
    model = common.clip_model(tokenizer, config.connect, config.world.image_size,
                              width=16, depth=1, heads=2, projection_dim=8, patch_size=8)
    pairs = common.connect_pairs(world, tokenizer)
    assert isinstance(pairs, cd.CaptionPairs)
    return model, pairs


def launch_local(processes: int, config_arg: str, workdir, log_dir, *overrides):
    """launch/local_multiprocess.sh (the README's example): ``processes`` JAX processes of
    one run sharing 2 CPU devices, with the tests' compile flag and compilation cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHON=sys.executable, DEVICES="2", GRACE="2", XLA_FLAGS=FAST_COMPILE,
               LOG_DIR=str(log_dir), **CACHE_ENV)
    return subprocess.run([os.path.join(ROOT, "launch", "local_multiprocess.sh"),
                           str(processes), f"--config={config_arg}", *overrides,
                           f"--workdir={workdir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def numbers(tree, prefix="") -> dict:
    """{path: value} of the numbers and strings in a results tree (timings left out)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                if key not in ("wall_time_s", "provenance", "hist") and "seconds" not in key
                for k, v in numbers(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in numbers(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def assert_same_numbers(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        else:
            assert got[key] == value, key


def caption_config(world, variant="c3", **overrides):
    """A tiny captioning run on ``world``; without METEOR (its JVM takes ~5 s to start in
    each test process), which test_caption_metrics and the ``trained`` run check."""
    c = coco_caption.get_config(variant)
    c.unlock()
    c.update(dict(data=dict(dataset_dir=world["dataset"], max_caption_tokens=12),
                  captioner=dict(gpt2=world["gpt2"], batch_size=8, max_steps=12, warmup_steps=3,
                                 lr=1e-3, log_every=1, checkpoint_every=4, val_batches=2),
                  eval=dict(max_decode_tokens=8, batch_size=8, spice=False, meteor=False)))
    c.update(overrides)
    return c


# The captioner reference run: 1 process x 2 devices, validated every third of the way with
# 'best' checkpoints beside the 'latest' ones, METEOR on. test_captioning checks its outputs;
# test_multiprocess checks that other process counts reproduce it.
CAPTION_REFERENCE = dict(captioner=dict(max_steps=15, checkpoint_every=5, val_batches=1),
                         eval=dict(max_examples=2, meteor=True))


@pytest.fixture(scope="session")
def scorer():
    """One METEOR JVM for this test process's in-process runs (``runner.run(...,
    scorer=scorer)``): starting one takes about 7 s."""
    with caption_metrics.Scorer() as shared:
        yield shared


def reference_run(factory, name: str, config, **objects) -> pathlib.Path:
    """The workdir of ``config`` run once per test session (shared by the pytest-xdist
    workers; tests read it and copy what they change); ``objects`` go to ``runner.run``."""
    def build(root):
        runner.run(config, str(root / "run"), **objects)
        return {"root": root}
    return shared_once(factory, name, build)["root"] / "run"


@pytest.fixture(scope="session")
def caption_reference(caption_world, tmp_path_factory, scorer):
    """(config, workdir) of the captioner reference run (``CAPTION_REFERENCE``)."""
    config = caption_config(caption_world, **CAPTION_REFERENCE)
    return config, reference_run(tmp_path_factory, "caption_reference", config, scorer=scorer)


@pytest.fixture(scope="session")
def t2i_reference(t2i_world, tmp_path_factory):
    """(config, workdir) of the generator reference run: ``t2i_config`` as it is (6 steps,
    checkpoints at 3 and 6), 1 process x 2 devices. test_generation checks its outputs;
    test_multiprocess checks that 2 processes reproduce it."""
    config = t2i_config(t2i_world)
    return config, reference_run(tmp_path_factory, "t2i_reference", config)


@pytest.fixture(scope="session")
def quick_main_job(tmp_path_factory, scorer):
    """(config, workdir) of the built-in world's main job with every method
    (``shapes_methods:quick``) on 1 process x 2 devices. Its world, tokenizer, Connect and
    embeddings stages are those of every ':quick' job on the world (``copy_world``)."""
    config = shapes_methods.get_config("quick")
    return config, reference_run(tmp_path_factory, "quick_main_job", config, scorer=scorer)


# A ':quick' shapes workdir's top-level entries that are not its shared stages.
NOT_WORLD = (".lock", "config.json", "captioners", "generators", "results.json", "RESULTS.md",
             "SIGMA_SWEEP.md")


def copy_world(workdir, to) -> None:
    """Copies ``workdir``'s stages but its captioners and generators (the world, tokenizer,
    Connect, embeddings; their files and stage records) to the new workdir ``to``, where a
    run on the same world reuses them."""
    top = os.path.abspath(workdir)

    def left_out(d, names):
        d = os.path.abspath(d)
        return [n for n in names
                if d == top and (n in NOT_WORLD or n.endswith(".png"))
                or d == os.path.join(top, "stages") and n.startswith(("captioner_", "generator_"))]
    shutil.copytree(workdir, to, ignore=left_out)


def count_calls(monkeypatch, module, name: str) -> list:
    """Records each call of ``module.name`` (a function called while a jitted program is
    traced: one entry per trace) in the returned list."""
    calls, fn = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def latest_state(workdir):
    """The latest checkpoint's state of a run (as numpy) and its step."""
    path = os.path.join(workdir, "checkpoints", "latest")
    with ocp.CheckpointManager(path) as mngr:
        restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"]), mngr.latest_step()


def checkpoint_params(workdir):
    """The latest checkpoint's params of a run, as numpy."""
    state, step = latest_state(workdir)
    return state["params"], step


_KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import ml_collections
    from c3_jax import runner
    from c3_jax.train import checkpoints
    kill_at, mid_save = int(sys.argv[3]), len(sys.argv) > 4
    save = checkpoints.Checkpoints.save
    def save_then_die(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == kill_at:
            if mid_save:  # at once: the asynchronous save is normally still writing
                writing = any("tmp" in n for n in os.listdir(self.latest.directory))
                open(sys.argv[2] + ".mid_save", "w").write(str(int(writing)))
                os.kill(os.getpid(), signal.SIGKILL)
            self.wait()
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoints.Checkpoints.save = save_then_die
    config = ml_collections.ConfigDict(json.loads(open(sys.argv[1]).read()))
    runner.run(config, sys.argv[2])
""")


def run_script(config, workdir, kill_at, devices=1, mid_save=False):
    path = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".json")
    with open(path, "w") as f:
        json.dump(config.to_dict(), f)
    env = {**os.environ,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
           "PYTHONPATH": ROOT}
    args = [path, workdir, str(kill_at)] + (["mid_save"] if mid_save else [])
    return subprocess.run([sys.executable, "-c", _KILL_SCRIPT, *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def t2i_world(tmp_path_factory):
    """16 train / 8 test rows: 8x8 images (the smallest generator: one upsampling block),
    16-d image and text embeddings (the tiny CLIP's width), 2 captions."""
    return shared_once(tmp_path_factory, "t2i_world", _build_t2i_world)


def _build_t2i_world(root) -> dict:
    clip_dir(root / "clip")
    rng = np.random.default_rng(0)
    splits, captions = {}, {}
    for split, n in (("train", 16), ("test", 8)):
        splits[split] = {
            "image": rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
            "image_embedding": (rng.normal(size=(n, 16)) + 1.0).astype(np.float32),
            "text_embedding": (rng.normal(size=(n, 2, 16)) - 1.0).astype(np.float32)}
        captions[split] = [[f"a red circle {i}", f"a circle {i}"] for i in range(n)]
    dataset = builders.build_pairs_dataset("tiny_t2i", str(root / "data"), splits, captions)
    return {"root": root, "dataset": dataset, "clip": str(root / "clip")}


def t2i_config(world, variant="c3", **overrides):
    """A tiny LAFITE run on ``world``. R1 on every step (generator.r1_every=1): one compiled
    G+D program per run instead of two (lazy R1, two programs, is what test_gan_sweep and
    test_stylegan2 check)."""
    c = coco_t2i.get_config(variant)
    c.update(dict(data=dict(dataset_dir=world["dataset"]),
                  generator=dict(clip=world["clip"], z_dim=8, w_dim=8, mapping_layers=2,
                                 cond_hidden=8, channel_base=64, channel_max=8, batch_size=8,
                                 max_steps=6, r1_every=1, pl_weight=0.0, log_every=1,
                                 checkpoint_every=3),
                  eval=dict(max_examples=0, batch_size=8, num_samples=4)))
    c.update(overrides)
    return c


GPT2_CONFIGS = {
    "gelu_new": dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    "gelu_inner": dict(vocab_size=99, n_positions=40, n_embd=24, n_layer=3, n_head=2, n_inner=50,
                       activation_function="gelu", layer_norm_epsilon=1e-6),
}


def tiny_gpt2(path, safetensors=True, name="gelu_new"):
    config = transformers.GPT2Config(**GPT2_CONFIGS[name])
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path, safe_serialization=safetensors)
    return model


def pytorch_fid_shapes():
    """pytorch-fid's fid_inception_v3 conv shapes (O, I, kh, kw) by module name."""
    s = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3),
         "Conv2d_2b_3x3": (64, 32, 3, 3), "Conv2d_3b_1x1": (80, 64, 1, 1),
         "Conv2d_4a_3x3": (192, 80, 3, 3)}
    for m, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        s.update({f"{m}.branch1x1": (64, cin, 1, 1), f"{m}.branch5x5_1": (48, cin, 1, 1),
                  f"{m}.branch5x5_2": (64, 48, 5, 5), f"{m}.branch3x3dbl_1": (64, cin, 1, 1),
                  f"{m}.branch3x3dbl_2": (96, 64, 3, 3), f"{m}.branch3x3dbl_3": (96, 96, 3, 3),
                  f"{m}.branch_pool": (pool, cin, 1, 1)})
    s.update({"Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
              "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3), "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3)})
    for m, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        s.update({f"{m}.branch1x1": (192, 768, 1, 1), f"{m}.branch7x7_1": (c7, 768, 1, 1),
                  f"{m}.branch7x7_2": (c7, c7, 1, 7), f"{m}.branch7x7_3": (192, c7, 7, 1),
                  f"{m}.branch7x7dbl_1": (c7, 768, 1, 1), f"{m}.branch7x7dbl_2": (c7, c7, 7, 1),
                  f"{m}.branch7x7dbl_3": (c7, c7, 1, 7), f"{m}.branch7x7dbl_4": (c7, c7, 7, 1),
                  f"{m}.branch7x7dbl_5": (192, c7, 1, 7), f"{m}.branch_pool": (192, 768, 1, 1)})
    s.update({"Mixed_7a.branch3x3_1": (192, 768, 1, 1), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
              "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1),
              "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
              "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1),
              "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3)})
    for m, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        s.update({f"{m}.branch1x1": (320, cin, 1, 1), f"{m}.branch3x3_1": (384, cin, 1, 1),
                  f"{m}.branch3x3_2a": (384, 384, 1, 3), f"{m}.branch3x3_2b": (384, 384, 3, 1),
                  f"{m}.branch3x3dbl_1": (448, cin, 1, 1), f"{m}.branch3x3dbl_2": (384, 448, 3, 3),
                  f"{m}.branch3x3dbl_3a": (384, 384, 1, 3),
                  f"{m}.branch3x3dbl_3b": (384, 384, 3, 1),
                  f"{m}.branch_pool": (192, cin, 1, 1)})
    return s


def random_state_dict(seed=0):
    """A pytorch-fid state dict with random, well-scaled values (torch tensors)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, (o, i, kh, kw) in pytorch_fid_shapes().items():
        sd[f"{name}.conv.weight"] = rng.normal(size=(o, i, kh, kw)) * np.sqrt(2 / (i * kh * kw))
        sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, o)
        sd[f"{name}.bn.bias"] = rng.normal(scale=0.1, size=o)
        sd[f"{name}.bn.running_mean"] = rng.normal(scale=0.1, size=o)
        sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, o)
    sd["fc.weight"] = rng.normal(scale=0.05, size=(1008, 2048))
    sd["fc.bias"] = rng.normal(scale=0.1, size=1008)
    out = {k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}
    out.update({f"{n}.bn.num_batches_tracked": torch.tensor(0) for n in pytorch_fid_shapes()})
    return out
