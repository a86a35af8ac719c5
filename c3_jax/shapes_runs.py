"""The built-in world, end to end: Connect (train a small CLIP) -> geometry of the learned
space -> captioners trained on text embeddings only, per C^3 variant and seed -> captions of
test images scored by COCO metrics and by attribute accuracy against the ground truth."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from c3_jax import geometry, geometry_runs, plots, runner
from c3_jax.data import builders, shapes
from c3_jax.data.text import build_word_tokenizer, encode_captions, load_tokenizer
from c3_jax.models import clip
from c3_jax.train import captioning, connect
from c3_jax.train import caption_data as cd
from c3_jax import parallel
from c3_jax.workdir import Workdir

FIELDS = {"shapes_caption": {
    "seed": int, "seeds": int, "variants": str, "image_size": int, "two_object_fraction": float,
    "connect_size": int, "train_size": int, "val_size": int, "test_size": int,
    "clip_width": int, "clip_depth": int, "clip_heads": int, "patch_size": int,
    "projection_dim": int, "connect_steps": int, "connect_batch": int, "connect_lr": float,
    "connect_temperature": float,
    "gpt_width": int, "gpt_depth": int, "gpt_heads": int, "prefix_length": int,
    "caption_steps": int, "caption_batch": int, "caption_lr": float, "caption_warmup": int,
    "noise_sigma": float, "calibration_pairs": int, "max_decode_tokens": int,
    "eval_batch_size": int}}
MAX_TOKENS = 20  # the longest world caption: 16 words, a comma, '.', EOS
# variant -> (C^3 variant, training field, sigma: "fixed" | "calibrated")
VARIANTS = {"c1": ("c1", "text_embedding", "fixed"),
            "c2_collapse": ("c2_collapse", "text_embedding", "fixed"),
            "c2_corrupt": ("c2_corrupt", "text_embedding", "fixed"),
            "c3": ("c3", "text_embedding", "fixed"),
            "c3_calibrated": ("c3", "text_embedding", "calibrated"),
            "supervised": ("c1", "image_embedding", "fixed"),
            "span_only": ("span_only", "text_embedding", "fixed")}
METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "attribute_accuracy",
           "exact_match")


def _world(config, wd: Workdir) -> str:
    path = wd.file(os.path.join("data", "shapes_world", "1.0.0"))
    if parallel.agreed(os.path.isdir(path)):
        return path
    sizes = {"connect": config.connect_size, "train": config.train_size,
             "val": config.val_size, "test": config.test_size}
    if wd.primary:  # with several processes, process 0 builds it and the others wait
        path = shapes.build_dataset(wd.file("data"), sizes, config.seed, config.image_size,
                                    two_object_fraction=config.two_object_fraction)
    parallel.barrier("shapes world")
    return path


def _all_captions(source) -> list:
    return [c for i in range(len(source)) for c in cd._captions(source[i], "caption")]


def world_tokenizer(world: str, path: str, primary: bool,
                    splits: tuple = ("connect", "train")):
    """A word-level tokenizer of the captions of ``splits`` (shared by CLIP and GPT-2),
    built at ``path`` once."""
    if not parallel.agreed(os.path.isdir(path)):
        if primary:
            build_word_tokenizer([c for s in splits
                                  for c in _all_captions(builders.data_source(world, s))], path)
        parallel.barrier("shapes tokenizer")
    return load_tokenizer(path)


def _tokenizer(world: str, wd: Workdir):
    return world_tokenizer(world, wd.file("tokenizer"), wd.primary)


def clip_model(tokenizer, *, width: int, depth: int, heads: int, projection_dim: int,
               image_size: int, patch_size: int) -> clip.CLIP:
    """The world's CLIP: a ViT on patches and a causal text transformer of one shape."""
    tower = clip.Tower(width, depth, heads, 4 * width, "gelu")
    return clip.CLIP(clip.CLIPConfig(text=tower, vision=tower, projection_dim=projection_dim,
                                     vocab_size=len(tokenizer), max_positions=MAX_TOKENS,
                                     eos_token_id=tokenizer.eos_token_id,
                                     image_size=image_size, patch_size=patch_size))


def connect_pairs(world: str, tokenizer) -> cd.CaptionPairs:
    """The connect split's (image, caption) pairs, tokenized."""
    return connect.image_pairs(builders.data_source(world, "connect")).tokenize(
        tokenizer, MAX_TOKENS, truncate=False)


def _connect(config, world: str, tokenizer, wd: Workdir):
    model = clip_model(tokenizer, width=config.clip_width, depth=config.clip_depth,
                       heads=config.clip_heads, projection_dim=config.projection_dim,
                       image_size=config.image_size, patch_size=config.patch_size)
    cfg = connect.ConnectConfig(steps=config.connect_steps, batch_size=config.connect_batch,
                                lr=config.connect_lr, seed=config.seed,
                                temperature=config.connect_temperature)
    return model, connect.train(model, connect_pairs(world, tokenizer), cfg, wd,
                                wd.file("connect"))


def _embed_splits(config, world: str, tokenizer, model, params, wd: Workdir) -> str:
    """The frozen CLIP's embeddings of the train/val/test splits (with the images), in
    COCO's layout."""
    path = wd.file(os.path.join("data", "shapes_clip", "1.0.0"))
    if parallel.agreed(os.path.isdir(path)):
        return path
    splits, captions = {}, {}
    for split in ("train", "val", "test"):
        src = builders.data_source(world, split)
        rows = [src[i] for i in range(len(src))]
        caps = [cd._captions(r, "caption") for r in rows]
        ids, mask = encode_captions(tokenizer, [c for cs in caps for c in cs], MAX_TOKENS)
        text = connect.encode(model, params, ids=ids, mask=mask)
        images = np.stack([r["image"] for r in rows])
        splits[split] = {
            "image": images, "image_embedding": connect.encode(model, params, images=images),
            "text_embedding": text.reshape(len(rows), len(caps[0]), -1),
            **{k: np.asarray([r[k] for r in rows]) for k in ("num_objects",) + shapes.ATTRIBUTES}}
        captions[split] = caps
    if wd.primary:  # every process encoded (data-parallel); process 0 writes
        path = builders.build_pairs_dataset("shapes_clip", wd.file("data"), splits, captions)
    parallel.barrier("shapes embeddings")
    return path


def space_probe(model: clip.CLIP, world: str, tokenizer, split: str = "val",
                group_size: int = 100):
    """A function of CLIP params -> the geometry of their space (``geometry.space_summary``)
    on a world split's pairs: each image with its first caption."""
    src = builders.data_source(world, split)
    rows = [src[i] for i in range(len(src))]
    images = np.stack([r["image"] for r in rows])
    ids, mask = encode_captions(tokenizer, [cd._captions(r, "caption")[0] for r in rows],
                                MAX_TOKENS)
    group = min(group_size, max(2, len(rows) // 5))

    def probe(params) -> dict:
        x = connect.encode(model, params, images=images)
        y = connect.encode(model, params, ids=ids, mask=mask)
        return geometry.space_summary(x, y, jax.random.PRNGKey(0), group)
    return probe


def connected_world(config, wd: Workdir) -> tuple:
    """World -> tokenizer -> Connect -> embeddings: (the CLIP module, its params, the
    world's dataset dir, the embeddings dataset dir); each step is reused when done."""
    world = _world(config, wd)
    tokenizer = _tokenizer(world, wd)
    model, params = _connect(config, world, tokenizer, wd)
    return model, params, world, _embed_splits(config, world, tokenizer, model, params, wd)


def _geometry(config, dataset: str, wd: Workdir) -> dict:
    """Effective dims, the gap, Table 1 statistics and calibrated sigma on test pairs
    (each image with its first caption); calibration uses val pairs."""
    test = builders.data_source(dataset, "test")
    x = np.stack([np.asarray(test[i]["image_embedding"], np.float32) for i in range(len(test))])
    y = np.stack([np.asarray(test[i]["text_embedding"][0], np.float32) for i in range(len(test))])
    group = min(100, max(2, len(x) // 5))  # Table 1 uses groups of 100
    report = geometry_runs.pair_geometry(x, y, wd, seed=config.seed, group_size=group,
                                         calibration_pairs=config.calibration_pairs, gamma=0.99,
                                         title="shapes world, learned CLIP space",
                                         names=("image", "text"))
    return report


def _gpt2_dir(config, tokenizer, wd: Workdir) -> str:
    """A GPT-2 config (trained from scratch) with the world's tokenizer."""
    path = wd.file("gpt2")
    if not wd.primary:
        parallel.barrier("shapes gpt2")
        return path
    os.makedirs(path, exist_ok=True)
    tokenizer.save_pretrained(path)
    hf = {"model_type": "gpt2", "vocab_size": len(tokenizer), "n_positions": 64,
          "n_embd": config.gpt_width, "n_layer": config.gpt_depth, "n_head": config.gpt_heads,
          "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
          "eos_token_id": tokenizer.eos_token_id}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    parallel.barrier("shapes gpt2")
    return path


def _captioner_config(config, dataset: str, gpt2_dir: str, name: str, seed: int,
                      sigma_calibrated: float):
    variant, field, sigma = VARIANTS[name]
    c = captioning.base_config("caption")
    c.update(dict(
        gpt2=gpt2_dir, gpt2_from_scratch=True, prefix_length=config.prefix_length,
        dataset_dir=dataset, train_field=field, max_caption_tokens=MAX_TOKENS,
        truncate_captions=False, variant=variant,
        noise_sigma=sigma_calibrated if sigma == "calibrated" else config.noise_sigma,
        batch_size=config.caption_batch, max_steps=config.caption_steps, lr=config.caption_lr,
        warmup_steps=config.caption_warmup, seed=seed, log_every=50,
        checkpoint_every=config.caption_steps, val_batches=4,
        max_decode_tokens=config.max_decode_tokens, eval_batch_size=config.eval_batch_size,
        spice=False))
    return c


def variant_names(text: str, known) -> list:
    """The comma-separated variant names of a config field, each checked against ``known``."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(known)}")
    return names


def _train_captioner(config, dataset, gpt2_dir, name, seed, sigma, attrs, wd: Workdir) -> dict:
    """One captioner run in its own workdir (reused when finished); adds attribute accuracy."""
    sub = wd.file(os.path.join("captioners", f"{name}_seed{seed}"))
    if not parallel.agreed(os.path.exists(os.path.join(sub, "results.json"))):
        runner.run(_captioner_config(config, dataset, gpt2_dir, name, seed, sigma), sub)
    sub_wd = Workdir(sub)
    result = sub_wd.read_json("results.json")
    captions = [r["prediction"] for r in sub_wd.read_json("captions_test.json")]
    acc = shapes.attribute_accuracy(captions, attrs)
    return {**result["metrics"], "attribute_accuracy": acc["mean"],
            "exact_match": acc["exact_match"], "per_attribute": acc, "captions": captions,
            "final_loss": result.get("final_loss")}


def test_attributes(dataset: str) -> dict:
    test = builders.data_source(dataset, "test")
    keys = ("num_objects",) + shapes.ATTRIBUTES
    return {k: np.asarray([int(test[i][k]) for i in range(len(test))]) for k in keys}


def _aggregate(runs: dict) -> dict:
    """{variant: {metric: {mean, std, per_seed}}} over seeds."""
    out = {}
    for name, seeds in runs.items():
        out[name] = {}
        for m in METRICS:
            vals = np.asarray([r[m] for r in seeds], np.float64)
            out[name][m] = {"mean": float(vals.mean()), "std": float(vals.std()),
                            "per_seed": vals.tolist()}
        per_attr = {k: float(np.nanmean([r["per_attribute"][k] for r in seeds]))
                    for k in seeds[0]["per_attribute"]}
        out[name]["per_attribute"] = per_attr
    return out


def _results_table(agg: dict, chance: dict, seeds: int, first_seed: int) -> str:
    head = "| variant | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    cell = ((lambda v: f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}") if seeds > 1
            else (lambda v: f"{100 * v['mean']:.1f}"))
    for name, row in agg.items():
        cells = [cell(row[m]) for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| chance (most frequent value) | " + " | ".join(
        "" if m not in ("attribute_accuracy", "exact_match") else
        f"{100 * chance['mean' if m == 'attribute_accuracy' else 'exact_match']:.1f}"
        for m in METRICS) + " |")
    over = f"mean ± std over {seeds} seeds" if seeds > 1 else f"seed {first_seed}"
    return (f"Scores × 100 on the test split, {over}.\n\n"
            + "\n".join(lines) + "\n")


def _samples_png(dataset: str, world: str, runs: dict, wd: Workdir, count: int = 8) -> str:
    src = builders.data_source(world, "test")
    images = [np.asarray(src[i]["image"]) for i in range(count)]
    captions = {name: seeds[0]["captions"][:count] for name, seeds in runs.items()}
    truth = [cd._captions(src[i], "caption")[0] for i in range(count)]
    return plots.captioned_images(images, {"truth": truth, **captions}, wd.file("samples.png"))


def run_shapes_caption(config, wd: Workdir) -> dict:
    """Connect -> Collapse -> Corrupt on the built-in world; see the module docstring."""
    tokenizer = _tokenizer(_world(config, wd), wd)
    model, params, world, dataset = connected_world(config, wd)
    geometry = _geometry(config, dataset, wd)
    # The criterion the Connect recipe was chosen by (the Connect study's): val pairs.
    geometry["val"] = space_probe(model, world, tokenizer, "val")(params)
    logging.info("learned space: gap %.3f, effective dims %d / %d, sigma calibrated %.4f",
                 geometry["modality_gap"], geometry["effective_dim_x"],
                 geometry["effective_dim_y"], geometry["sigma_calibrated"])
    gpt2_dir = _gpt2_dir(config, tokenizer, wd)
    attrs = test_attributes(dataset)
    runs = {name: [_train_captioner(config, dataset, gpt2_dir, name, config.seed + s,
                                    geometry["sigma_calibrated"], attrs, wd)
                   for s in range(config.seeds)]
            for name in variant_names(config.variants, VARIANTS)}
    agg = _aggregate(runs)
    chance = shapes.chance_accuracy(attrs)
    table = _results_table(agg, chance, config.seeds, config.seed)
    if wd.primary:
        with open(wd.file("RESULTS.md"), "w") as f:
            f.write("# Shapes world: captioning images from text-only training\n\n" + table)
    print("\n" + table)
    _samples_png(dataset, world, runs, wd)
    return {"variants": agg, "chance": chance, "geometry": geometry,
            "sigma_calibrated": geometry["sigma_calibrated"], "sigma_fixed": config.noise_sigma,
            "seeds": config.seeds, "num_test": int(len(attrs["shape"]))}
