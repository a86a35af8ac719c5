"""A COCO-sized dry run with nothing downloaded ('coco_dryrun'): a dataset of the Karpathy
split's size written from synthetic embeddings and captions, the real captioning
experiment for a few steps with a randomly initialised GPT-2 of the paper's size, the
real text-to-image experiment for a few steps at 64 px, and the figures a user needs
before the real run: peak memory, size on disk, write throughput, step times and the
projected wall time of the paper's schedules on this machine."""
from __future__ import annotations

import os
import resource
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from c3_jax.data import builders
from c3_jax.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from c3_jax.data.text import build_word_tokenizer
from c3_jax.eval.caption_metrics import Scorer
from c3_jax.experiments import caption, checks, stages, t2i
from c3_jax.experiments.schema import field_types
from c3_jax.models import clip, gpt2
from c3_jax.progress import progress_bar
from c3_jax.train import generation
from c3_jax.workdir import Workdir


def default_dataset(quick: bool = False) -> ml_collections.ConfigDict:
    """The synthetic dataset: the Karpathy split's sizes, CLIP ViT-B/32-like embeddings."""
    d = ml_collections.ConfigDict()
    d.train_size = 96 if quick else 113_287
    d.val_size = 8 if quick else 5_000
    d.test_size = 8 if quick else 5_000
    d.captions_per_image = 5
    d.embedding_dim = 512
    d.write_batch = 32 if quick else 1024  # rows per write
    return d


def default_captioner(quick: bool = False) -> ml_collections.ConfigDict:
    """Captioning: the 'caption' defaults' setup (batch 40, prefix 10, MLP mapper) on GPT-2 small."""
    c = ml_collections.ConfigDict()
    c.width = 32 if quick else 768
    c.depth = 1 if quick else 12
    c.heads = 2 if quick else 12
    c.vocab = 0 if quick else 50257  # 0: the tokenizer's
    c.steps = 3 if quick else 8  # the first compiles; the step time is taken over the others
    c.eval_examples = 8 if quick else 120  # three decoding batches of 40
    c.eval_batch = 4 if quick else 40
    c.paper_epochs = 10  # Section 4.1's schedule, to project
    c.paper_batch = 40
    return c


def default_t2i(quick: bool = False) -> ml_collections.ConfigDict:
    """Text-to-image: the 't2i' defaults' LAFITE StyleGAN2 (batch 16) at 64 px."""
    t = ml_collections.ConfigDict()
    t.image_size = 16 if quick else 64
    t.rows = 32 if quick else 256
    t.steps = 3 if quick else 5
    t.eval_examples = 4 if quick else 16
    t.latent_dim = 16 if quick else 512  # z, w, cond
    t.mapping_layers = 1 if quick else 8
    t.channel_max = 8 if quick else 512
    # Lazy R1 as the 't2i' defaults (two programs: with and without R1); quick: one program.
    t.r1_every = 1 if quick else 16
    t.pl_weight = 0.0 if quick else 2.0  # the path-length penalty as the 't2i' defaults (0: none)
    t.paper_steps = 750_000  # the 't2i' defaults' max_steps, to project
    return t


def default_clip(quick: bool = False) -> ml_collections.ConfigDict:
    """Its frozen encoder: CLIP ViT-B/32's image tower, randomly initialised."""
    c = ml_collections.ConfigDict()
    c.width = 32 if quick else 768
    c.depth = 1 if quick else 12
    c.heads = 2 if quick else 12
    c.image_size = 32 if quick else 224
    c.patch_size = 8 if quick else 32
    return c


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Every field of the dry run with its default: the Karpathy split's sizes and the
    paper's models; ``quick``: a tiny end-to-end check for tests."""
    c = ml_collections.ConfigDict()
    c.experiment = "coco_dryrun"
    c.seed = 0
    c.dataset = default_dataset(quick)
    c.captioner = default_captioner(quick)
    c.t2i = default_t2i(quick)
    c.clip = default_clip(quick)
    return c


FIELDS = {"coco_dryrun": field_types(default_config())}

# Words of the synthetic captions: "a <adjective> <noun> <verb> <preposition> the <noun> ."
ADJECTIVES = ("small", "large", "red", "white", "black", "young", "old", "wooden", "busy",
              "green", "empty", "tall", "yellow", "blue", "little", "brown")
NOUNS = ("man", "woman", "dog", "cat", "train", "bus", "table", "street", "plate", "horse",
         "kitchen", "bench", "pizza", "field", "boat", "giraffe", "bird", "car", "child",
         "room", "tree", "sign", "clock", "beach", "person", "laptop", "bed", "window")
VERBS = ("sitting", "standing", "walking", "parked", "lying", "riding", "looking", "eating",
         "holding", "waiting")
PREPOSITIONS = ("on", "in", "near", "next to", "under", "behind", "across")
WORDS = ("a", "the", ".") + ADJECTIVES + NOUNS + VERBS + tuple(
    w for p in PREPOSITIONS for w in p.split())


def check(config) -> None:
    checks.at_least(config, 1, ["dataset.train_size", "dataset.val_size", "dataset.test_size",
                                "dataset.captions_per_image", "dataset.embedding_dim",
                                "dataset.write_batch", "captioner.width", "captioner.depth",
                                "captioner.heads", "t2i.rows", "t2i.eval_examples",
                                "t2i.latent_dim", "t2i.mapping_layers", "t2i.channel_max",
                                "t2i.r1_every",
                                "clip.width", "clip.depth", "clip.heads", "clip.patch_size",
                                "captioner.paper_epochs", "captioner.paper_batch",
                                "t2i.paper_steps"])
    # Two steps at least: the first compiles, the step time is taken over the others.
    checks.at_least(config, 2, ["captioner.steps", "t2i.steps"])
    checks.at_least(config, 16, ["t2i.image_size"])
    checks.at_least(config, 0.0, ["t2i.pl_weight"])
    checks.at_least(config, config.captioner.eval_batch, ["captioner.eval_examples"])
    checks.at_least(config, 1, ["captioner.eval_batch"])
    checks.at_least(config, 0, ["captioner.vocab"])
    if 0 < config.captioner.vocab < len(WORDS) + 3:
        raise ValueError(f"captioner.vocab {config.captioner.vocab} is smaller than the "
                         f"synthetic captions' tokenizer ({len(WORDS) + 3} tokens); 0 uses "
                         f"its size")
    for part in ("captioner", "clip"):
        width, heads = config[part].width, config[part].heads
        if width % heads:
            raise ValueError(f"{part}.width {width} is not a multiple of {part}.heads {heads}")
    if config.clip.image_size % config.clip.patch_size:
        raise ValueError(f"clip.image_size {config.clip.image_size} is not a multiple of "
                         f"clip.patch_size {config.clip.patch_size}")
    checks.java()


def synthetic_captions(rng: np.random.Generator, rows: int, k: int) -> list:
    """``rows`` lists of ``k`` COCO-like sentences (10-12 words) drawn by ``rng``."""
    pick = lambda words: [words[i] for i in rng.integers(0, len(words), rows * k)]
    parts = zip(pick(ADJECTIVES), pick(NOUNS), pick(VERBS), pick(PREPOSITIONS), pick(NOUNS))
    sentences = [f"a {a} {n} {v} {p} the {m} ." for a, n, v, p, m in parts]
    return [sentences[i * k:(i + 1) * k] for i in range(rows)]


def synthetic_rows(seed: int, split: str, start: int, rows: int, k: int, dim: int,
                   image_size: int = 0) -> tuple:
    """Rows ``start...`` of a synthetic split (the same for any batching: each row is drawn
    from its own seed): unit image embeddings, k unit text embeddings near each, shifted by
    one offset of length 0.8 (a modality gap), an id, captions and, when ``image_size`` > 0,
    uint8 noise images. Returns (arrays, captions)."""
    arrays = {"image_embedding": np.empty((rows, dim), np.float32),
              "text_embedding": np.empty((rows, k, dim), np.float32),
              "image_id": np.arange(start, start + rows, dtype=np.int64)}
    if image_size:
        arrays["image"] = np.empty((rows, image_size, image_size, 3), np.uint8)
    gap = np.random.default_rng([seed, 1]).normal(size=dim)
    gap *= 0.8 / np.linalg.norm(gap)
    captions = []
    for j in range(rows):
        rng = np.random.default_rng([seed, sum(map(ord, split)), start + j])
        image = rng.normal(size=dim) / np.sqrt(dim)
        text = image + 0.5 * rng.normal(size=(k, dim)) / np.sqrt(dim) + gap
        arrays["image_embedding"][j] = image / np.linalg.norm(image)
        arrays["text_embedding"][j] = text / np.linalg.norm(text, axis=-1, keepdims=True)
        if image_size:
            arrays["image"][j] = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
        captions += synthetic_captions(rng, 1, k)
    return arrays, captions


def write_synthetic_dataset(name: str, data_dir: str, sizes: dict, k: int, dim: int,
                            image_size: int, write_batch: int, seed: int,
                            overwrite: bool = False) -> dict:
    """Writes the synthetic dataset with ``PairsWriter``, ``write_batch`` rows at a time
    (each process its part); returns its figures: rows, seconds, rows/s, MB/s of
    serialized records, bytes on disk and the process's peak RSS after the write."""
    fields = {"image_embedding": ((dim,), np.float32),
              "text_embedding": ((k, dim), np.float32), "image_id": ((), np.int64)}
    if image_size:
        fields["image"] = ((image_size, image_size, 3), np.uint8)
    start = time.perf_counter()
    with builders.PairsWriter(name, data_dir, sizes, fields, (k,), overwrite) as writer:
        for split, n in sizes.items():
            part = builders.process_rows(n)
            for lo in progress_bar(range(part.start, part.stop, write_batch),
                                   desc=f"write {split}", unit="batch"):
                arrays, caps = synthetic_rows(seed, split, lo,
                                              min(write_batch, part.stop - lo), k, dim,
                                              image_size)
                writer.write(split, lo, arrays, caps)
    seconds = time.perf_counter() - start
    rows = sum(part.stop - part.start for part in writer.parts.values())  # this process's
    return {"dataset_dir": writer.final, "rows": sum(sizes.values()), "seconds": seconds,
            "rows_per_second": rows / seconds,
            "write_mb_per_second": writer.written_bytes / seconds / 1e6,
            "bytes_on_disk": _disk_bytes(writer.final), "peak_rss_gb": peak_rss_gb()}


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _staged(wd: Workdir, name: str, fields: dict, build) -> dict:
    """``build(directory)``'s figures, cached as stage ``name`` of ``wd`` (in ``name/``)."""
    path = wd.file(name)
    if stages.begin(wd, name, fields, [path]):
        return Workdir(path).read_json("figures.json")
    sub = Workdir(path)
    figures = build(sub)
    sub.write_json("figures.json", figures)
    stages.finish(wd, name)
    return figures


def run_coco_dryrun(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    ds, cap = config.dataset, config.captioner
    sizes = {"train": ds.train_size, "val": ds.val_size, "test": ds.test_size}
    k, dim = ds.captions_per_image, ds.embedding_dim
    base = {"seed": config.seed, **{f: ds[f] for f in ("captions_per_image", "embedding_dim",
                                                     "write_batch")}}
    dataset = _staged(wd, "dataset", {**base, "sizes": sizes}, lambda sub: {
        **write_synthetic_dataset("coco_synthetic", sub.file("data"), sizes, k, dim, 0,
                                  ds.write_batch, config.seed)})
    gpt2_path = _gpt2_dir(config, wd)
    captioning = _staged(wd, "captioning", {
        **base, "sizes": sizes, "gpt2": _gpt2_fields(config),
        "steps": cap.steps, "eval": cap.eval_examples, "eval_batch": cap.eval_batch,
        "paper": [cap.paper_epochs, cap.paper_batch]},  # the projection is in the figures
        lambda sub: _captioning(config, dataset["dataset_dir"], gpt2_path, sub, scorer))
    t2i_sizes = {"train": config.t2i.rows, "test": config.t2i.eval_examples}
    t2i_figures = _staged(wd, "t2i", {
        **base, "sizes": t2i_sizes,
        "t2i": dict(config.t2i),
        "clip": dict(config.clip)}, lambda sub: _t2i(config, t2i_sizes, sub))
    results = {"dataset": dataset, "captioning": captioning, "t2i": t2i_figures,
               "peak_rss_gb": peak_rss_gb(), "cpu_count": os.cpu_count(),
               "devices": [d.device_kind for d in jax.devices()]}
    wd.write_text("RESULTS.md", _table(results))
    return results


def _gpt2_fields(config) -> dict:
    return {f: config.captioner[f] for f in ("width", "depth", "heads", "vocab")}


def _gpt2_dir(config, wd: Workdir) -> str:
    """A GPT-2 config of the paper's size (randomly initialised by the captioner) with a
    word tokenizer of the synthetic captions."""
    path = wd.file("gpt2")
    if not stages.begin(wd, "gpt2", _gpt2_fields(config), [path]):
        if wd.primary:
            tokenizer = build_word_tokenizer([" ".join(WORDS)], path)
            c = config.captioner
            gpt2.write_config_dir(path, tokenizer, c.width, c.depth, c.heads, 1024,
                                  vocab_size=c.vocab)
        stages.finish(wd, "gpt2")
    return path


def _captioning(config, dataset: str, gpt2_path: str, sub: Workdir,
                scorer: Optional[Scorer]) -> dict:
    """The 'caption' experiment (C^3, the paper's setup) for ``captioner.steps`` steps and
    its evaluation on ``captioner.eval_examples`` test images (METEOR with ``scorer``'s
    JVM, else one of its own); step time and projection."""
    ds, cap = config.dataset, config.captioner
    c = caption.default_config("caption")
    c.seed = config.seed
    c.data.dataset_dir = dataset
    c.captioner.update(dict(gpt2=gpt2_path, gpt2_from_scratch=True, max_steps=cap.steps,
                            log_every=1, checkpoint_every=cap.steps, val_batches=1))
    c.eval.update(dict(max_examples=cap.eval_examples, batch_size=cap.eval_batch, spice=False))
    start = time.perf_counter()
    out = caption.run_caption(c, sub, scorer)
    seconds = time.perf_counter() - start
    pairs = ds.train_size * ds.captions_per_image
    steps = cap.paper_epochs * (pairs // cap.paper_batch)
    per_step = out["seconds_per_step"]
    decode = out["seconds_per_decode_batch"] / cap.eval_batch
    return {"steps": cap.steps, "batch_size": c.captioner.batch_size,
            "seconds_per_step": per_step, "run_seconds": seconds,
            "decode_seconds_per_image": decode,
            "paper_schedule": {"epochs": cap.paper_epochs, "batch": cap.paper_batch,
                               "steps": steps},
            "projected_train_hours": steps * per_step / 3600,
            "projected_test_eval_hours": ds.test_size * decode / 3600,
            "metrics_on_random_weights": out.get("metrics", {}),
            "peak_rss_gb": peak_rss_gb()}


def _t2i(config, sizes: dict, sub: Workdir) -> dict:
    """The 't2i' experiment (LAFITE's StyleGAN2 of coco_t2i, with a frozen randomly
    initialised CLIP ViT-B/32) on a small dataset of synthetic images."""
    ds, g = config.dataset, config.t2i
    written = write_synthetic_dataset("coco_synthetic_images", sub.file("data"), sizes,
                                      ds.captions_per_image, ds.embedding_dim,
                                      g.image_size, ds.write_batch, config.seed)
    c = t2i.default_config()
    c.seed = config.seed
    c.data.dataset_dir = written["dataset_dir"]
    width = g.latent_dim
    c.generator.update(dict(z_dim=width, w_dim=width, cond_hidden=width,
                            mapping_layers=g.mapping_layers, r1_every=g.r1_every,
                            pl_weight=g.pl_weight, channel_max=g.channel_max, clip="",
                            max_steps=g.steps, log_every=1, checkpoint_every=g.steps))
    c.eval.update(dict(max_examples=g.eval_examples, batch_size=g.eval_examples,
                       num_samples=4))
    start = time.perf_counter()
    out = t2i.run_t2i(c, Workdir(sub.file("run")), _random_clip(config))
    seconds = time.perf_counter() - start
    per_step = out["final_metrics"]["seconds_per_step"]
    return {"image_size": g.image_size, "steps": g.steps,
            "batch_size": c.generator.batch_size, "r1_every": c.generator.r1_every,
            "seconds_per_step": per_step, "run_seconds": seconds,
            "paper_steps": g.paper_steps,
            "projected_train_hours": g.paper_steps * per_step / 3600,
            "peak_rss_gb": peak_rss_gb()}


def _random_clip(config) -> generation.Encoder:
    """A CLIP image tower of the config's size (ViT-B/32's by default), randomly
    initialised: there are no weights here."""
    c = config.clip
    tower = clip.Tower(c.width, c.depth, c.heads, 4 * c.width)
    module = clip.CLIP(clip.CLIPConfig(vision=tower, image_size=c.image_size,
                                       patch_size=c.patch_size))
    size = c.image_size
    params = jax.jit(lambda key: module.init(
        key, jax.numpy.zeros((1, 3, size, size)), method="encode_image")["params"])(
        jax.random.key(config.seed))
    return generation.tower_encoder(module, params, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _table(results: dict) -> str:
    d, c, g = results["dataset"], results["captioning"], results["t2i"]
    return "\n".join([
        "| figure | value |", "|---|---|",
        f"| dataset rows | {d['rows']:,} |",
        f"| dataset on disk | {d['bytes_on_disk'] / 1e9:.2f} GB |",
        f"| write throughput | {d['rows_per_second']:,.0f} rows/s, "
        f"{d['write_mb_per_second']:.1f} MB/s |",
        f"| peak RSS after the write | {d['peak_rss_gb']:.2f} GB |",
        f"| captioner step (batch {c['batch_size']}) | {c['seconds_per_step']:.2f} s |",
        f"| paper schedule ({c['paper_schedule']['steps']:,} steps) | "
        f"{c['projected_train_hours']:.1f} h train + "
        f"{c['projected_test_eval_hours']:.1f} h test decoding |",
        f"| text-to-image step (batch {g['batch_size']}, {g['image_size']} px) | "
        f"{g['seconds_per_step']:.2f} s |",
        f"| LAFITE schedule ({g['paper_steps']:,} steps) | "
        f"{g['projected_train_hours']:.1f} h |",
        f"| peak RSS of the whole run | {results['peak_rss_gb']:.2f} GB |", ""])
