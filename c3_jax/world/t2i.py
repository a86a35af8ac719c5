"""Text-to-image on the built-in world: the CLIP of Connect (shared with shapes_caption),
LAFITE StyleGAN2s trained on ``train`` images only, one per C^3 variant and generator seed
(``sweep.seeds`` of them, all in one sweep), images generated from ``test`` captions, scored by
Fréchet distance in the CLIP image space and by the attribute accuracy a probe classifier
(trained on real images) reads from them, as mean ± sample std over the seeds. Each generator also
draws the test scenes from their images' own embeddings (its training condition, no
modality gap), so that what the gap costs is told apart from what the generator cannot
draw; and a linear probe reads each attribute from the embeddings themselves
(``condition_readout``: a lower bound on what the condition tells a generator)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from c3_jax import geometry, parallel, plots, stats
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.experiments import checks, stages
from c3_jax.experiments.schema import field_types
from c3_jax.experiments.t2i import check_settings as t2i_check_settings
from c3_jax.experiments.t2i import default_config as t2i_defaults
from c3_jax.experiments.t2i import default_method as t2i_method_defaults
from c3_jax.train import caption_sweep, connect, gan_sweep, generation
from c3_jax.workdir import Workdir
from c3_jax.world import caption, common, scenes
from c3_jax.world import probe as attribute_probe


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Every field of text-to-image on the world ('shapes_t2i') with its default: the main
    job's world and Connect, and the text-to-image experiment's ``data``, ``generator``,
    ``method`` and ``eval`` sub-configs (``c3_jax.experiments.t2i.default_config``) with the
    world's values; ``quick``: a tiny end-to-end check for tests."""
    main = caption.default_config(quick)
    c = t2i_defaults()
    c.experiment = "shapes_t2i"
    c.seed = main.seed
    c.world = main.world
    c.connect = main.connect
    # The world's dataset (what the run builds) and its own CLIP (Connect's image tower).
    c.data.dataset_dir = ""
    c.generator.clip = ""
    world_generator(c.generator, quick)
    c.method.calibration_split = "val"
    c.method.calibration_pairs = main.method.calibration_pairs
    c.eval.fid_protocol = "paired"
    c.eval.max_examples = 0  # all test rows
    c.eval.num_samples = 4 if quick else 10
    c.sweep = ml_collections.ConfigDict()
    c.sweep.variants = ("c1", "c2_collapse", "c2_corrupt", "c3")
    # Generator seeds per variant: seed, seed + 1, ... (members <variant>_seed<k> of one
    # sweep); a seed varies the generator's initialization, data order, latents and noise,
    # not the world, Connect or probe (those of `seed`).
    c.sweep.seeds = 1 if quick else 3
    c.probe_steps = 20 if quick else 800  # the attribute probe, trained on real images
    return c


def world_generator(g: ml_collections.ConfigDict, quick: bool) -> None:
    """LAFITE's generator and discriminator at the world's size: 32x32, 32 channels at most,
    2 mapping layers. Settings that differ from StyleGAN2's and LAFITE's: RGB from the last
    resolution only ('orig', not 'skip'), batch 8 (more steps in the same time), Adam's lr
    1e-2 (not 2.5e-3) and the itc weight 30 (not 10), chosen by the probe's shape accuracy
    on images drawn from the val images' embeddings (c3, seed 0, confirmed at seed 1;
    docs/results/shapes_t2i.md). Collapse in the losses stays as the official C^3 code by
    default (collapse_twice, itc_space "clip"); both move the CLIP-space FD."""
    g.z_dim = 8 if quick else 32
    g.w_dim = 16 if quick else 64
    g.mapping_layers = 2
    g.cond_hidden = 16 if quick else 64
    g.channel_base = 128 if quick else 512
    g.channel_max = 8 if quick else 32
    g.architecture = "orig"
    g.max_steps = 4 if quick else 6000
    g.batch_size = 8
    g.lr = 1e-2
    g.r1_gamma = 1.0
    # quick: R1 on every step (one compiled G+D program instead of two)
    g.r1_every = 1 if quick else 16
    g.itd_weight = 5.0
    g.itc_weight = 30.0
    g.ema_kimg = 2.0
    g.pl_weight = 0.0 if quick else 2.0  # quick: no path-length program to compile
    g.log_every = 1 if quick else 300  # 20 lines in 6,000 steps
    g.checkpoint_every = g.get_ref("max_steps")  # one checkpoint, at the end


FIELDS = {"shapes_t2i": field_types(default_config())}
VARIANTS = ("c1", "c2_collapse", "c2_corrupt", "c3", "c3_calibrated", "c3_standardize",
            "c3_aniso")
# Each generator's images from the test captions' text embeddings (the task) and from the
# test images' own embeddings through its training transform (no modality gap: a ceiling).
GENERATED = {"text": "generated_test.npy", "image": "generated_test_from_images.npy"}
READOUT = {"image_embedding": "image", "text_embedding": "text (first caption)"}
METRICS = ("attribute_accuracy", "exact_match", "clip_frechet_distance", "clip_score")
# The orderings reported as paired differences a - b over the seeds (same seed: same data
# order and latents), on the images from text.
COMPARISONS = (("c3", "c1"), ("c3", "c2_corrupt"), ("c3", "c2_collapse"),
               ("c2_collapse", "c1"), ("c2_corrupt", "c1"))
PAIRED_METRICS = ("attribute_accuracy", "clip_frechet_distance")


def check(config) -> None:
    """Every value of a shapes_t2i config, checked before any work."""
    common.check_world(config)
    t2i_check_settings(config)
    common.variant_names(config.sweep.variants, VARIANTS)
    checks.at_least(config, 1, ["sweep.seeds", "probe_steps"])
    checks.at_least(config, config.generator.batch_size, ["world.train_size"])
    checks.unset(config, ["data.dataset_dir", "generator.clip", "generator.restore_from",
                          "generator.init_from"],
                 "the world trains its generators on the dataset and CLIP it builds")
    checks.unread_by_sweeps(config, t2i_method_defaults())
    common.every_test_scene(config)
    caption.calibration_fits(config)


@dataclasses.dataclass(frozen=True)
class WorldTower:
    """The world's CLIP image tower on images in [-1, 1] (an ``Encoder``'s ``fn``)."""
    model: Any

    def __call__(self, p, x: jax.Array) -> jax.Array:
        return self.model.apply({"params": p}, connect.pixels((x + 1.0) * 127.5),
                                method="encode_image")


def _encoder(model, params) -> generation.Encoder:
    """The world's CLIP image tower on images in [-1, 1]."""
    return generation.Encoder(WorldTower(model), params)


def _split(world: str, split: str) -> tuple:
    """Images [n, R, R, 3] and attribute arrays of a world split."""
    rows = common.split_rows(world, split)
    return np.stack([np.asarray(r["image"]) for r in rows]), common.row_attributes(rows)


def members(config, variants: list, dataset: str) -> list:
    """The sweep's members ``<variant>_seed<k>``: every variant (``caption_sweep.NAMED``:
    its method and sigma kind) x ``sweep.seeds`` generator seeds from ``seed``."""
    named = {v: caption_sweep.NAMED[v] for v in variants}  # (method, field, sigma kind)
    calibrated = (caption_sweep.noise_model_of(common.with_dataset(config, dataset).data,
                                               config.method)["sigma"]
                  if any(named[v][2] == "calibrated" for v in variants) else None)
    return [m for v in variants for m in caption_sweep.member_grid(
        v, named[v][0], config.data.train_field,
        [calibrated if named[v][2] == "calibrated" else config.method.noise_sigma],
        config.seed, config.sweep.seeds, False)]


def _generators(config, dataset: str, members: list, encoder, wd: Workdir) -> dict:
    """{member: its Workdir, with results.json and generated_test.npy}: each cached in
    ``generators/<member>/``; those not done yet trained and sampled as one sweep per
    generator seed (its variants). The step unrolls a sweep's members
    (``gan_sweep.over_members``), so its compile time grows with their number: per seed,
    every sweep is the same program, compiled once and then read from the persistent
    compilation cache (a member's figures do not depend on the sweep it is in)."""
    base = common.with_dataset(config, dataset)
    shared = {"run": common.member_fields(base, "generator"),
              "upstream": common.connect_fields(config), "generated_from": list(GENERATED)}

    def train(pending, sweep_wd, outputs):
        sweep = gan_sweep.GanSweep(base, pending, sweep_wd, encoder)
        ema, summary = gan_sweep.train(sweep)
        results = {source: gan_sweep.evaluate(sweep, ema, base.eval.max_examples,
                                              from_images=source == "image")
                   for source in GENERATED}
        for m in pending:
            out = outputs[m.name]
            out.write_json("results.json", {**summary[m.name], "metrics": {
                source: results[source][m.name]["metrics"] for source in GENERATED}})
            if out.primary:
                for source, file in GENERATED.items():
                    np.save(out.file(file), results[source][m.name]["images"])

    by_seed = {}
    for m in members:
        by_seed.setdefault(m.seed, []).append(m)
    return {name: out for group in by_seed.values()
            for name, out in stages.cached_members(wd, "generator", group, shared,
                                                   train).items()}


def _embeddings(dataset: str, split: str) -> tuple:
    """A split's image embeddings, its first captions' text embeddings and its attributes."""
    rows = common.split_rows(dataset, split)
    first = lambda e: e[0] if e.ndim == 2 else e  # a scene's captions: the first one
    return ({f: np.stack([first(np.asarray(r[f])) for r in rows]) for f in READOUT},
            common.row_attributes(rows))


def condition_readout(dataset: str) -> dict:
    """{field: {attribute: accuracy}}: how much of each attribute the generators' condition
    space carries, read by a linear probe (``geometry.linear_readout``) fitted on the train
    split's embeddings and scored on the val split's (image embeddings: what the generators
    train on; text embeddings: what they are given at test time)."""
    (x_train, y_train), (x_val, y_val) = (_embeddings(dataset, s) for s in ("train", "val"))
    return {f: {k: geometry.linear_readout(x_train[f], y_train[k], x_val[f], y_val[k])
                for k in common.REPORTED_ATTRIBUTES} for f in READOUT}


def _scored(generator_wd: Workdir, probe, test_attrs: dict, source: str) -> dict:
    """A finished generator's metrics on its images from ``source`` ('text' or 'image'
    embeddings of the test split), with the attribute accuracy the probe reads."""
    result = generator_wd.read_json("results.json")
    images = np.load(generator_wd.file(GENERATED[source]))
    acc = attribute_probe.probe_accuracy(probe, images, test_attrs)
    return {**result["metrics"][source], "attribute_accuracy": acc["mean"],
            "exact_match": acc["exact_match"], "per_attribute": acc, "images": images}


def aggregate(runs: dict) -> dict:
    """{variant: {metric: {mean, std, per_seed}}} over the seeds of ``runs`` ({variant:
    [scores of each seed]}); per attribute too."""
    return {name: {**{m: stats.mean_std([r[m] for r in seeds]) for m in METRICS},
                   "per_attribute": {k: stats.mean_std([r["per_attribute"][k] for r in seeds])
                                     for k in common.REPORTED_ATTRIBUTES}}
            for name, seeds in runs.items()}


def gap_cost(text: dict, image: dict) -> dict:
    """{variant: {attribute: paired interval}} of the accuracy from the test captions less
    that from the test images' own embeddings (the same generator, seed by seed): what the
    modality gap costs; 'mean' is the mean attribute accuracy."""
    pairs = lambda a, b: stats.paired_interval(a["per_seed"], b["per_seed"])
    return {name: {"mean": pairs(row["attribute_accuracy"], image[name]["attribute_accuracy"]),
                   **{k: pairs(row["per_attribute"][k], image[name]["per_attribute"][k])
                      for k in common.REPORTED_ATTRIBUTES}}
            for name, row in text.items()}


def paired_differences(agg: dict) -> dict:
    """{'a − b': {metric: paired interval}} for each of ``COMPARISONS`` whose variants ran,
    over their seeds (the same seed: the same data order and latents)."""
    return {f"{a} − {b}": {m: stats.paired_interval(agg[a][m]["per_seed"],
                                                    agg[b][m]["per_seed"])
                           for m in PAIRED_METRICS}
            for a, b in COMPARISONS if a in agg and b in agg}


def interval_cell(iv: dict, scale: float = 100.0, digits: int = 1) -> str:
    """'mean [low, high]' of a paired interval times ``scale`` (the mean alone for one
    seed)."""
    f = lambda x: f"{scale * x:+.{digits}f}"
    if iv["low"] is None:
        return "n/a" if iv["mean"] is None else f"{f(iv['mean'])} (one seed)"
    return f"{f(iv['mean'])} [{f(iv['low'])}, {f(iv['high'])}]"


def score_cell(row: dict, metric: str) -> str:
    """'mean ± std' of a metric's ``mean_std`` row, in the table's units."""
    if metric in ("attribute_accuracy", "exact_match"):
        return stats.mean_pm_std(row)
    digits = 4 if metric == "clip_frechet_distance" else 3
    if row["mean"] is None:
        return "n/a"
    return f"{row['mean']:.{digits}f}" + ("" if row["std"] is None else
                                          f" ± {row['std']:.{digits}f}")


def results_table(agg: dict, gap: dict, paired: dict, ceiling: dict, chance: dict,
                  readout: dict, seeds: int, first_seed: int) -> str:
    """Markdown: the scores of the images from text per variant, every attribute's accuracy
    of the images from text and from the test images' own embeddings, the linear readout
    of each attribute from the val embeddings, what the gap costs (text − image) and the
    variants' paired differences."""
    over = (f"mean ± sample std (ddof = 1) over {seeds} generator seeds {first_seed}.."
            f"{first_seed + seeds - 1} (a seed varies the generator's initialization, data "
            f"order, latents and noise; the world, Connect and probe are those of seed "
            f"{first_seed})" if seeds > 1 else f"generator seed {first_seed}")
    text = agg["text"]
    lines = [f"Images from the test captions, {over}; accuracies × 100.", "",
             "| variant | attribute acc. | exact match | CLIP-space FD | CLIP score |",
             "|---|---|---|---|---|"]
    for name, row in text.items():
        lines.append(f"| {name} | " + " | ".join(score_cell(row[m], m) for m in METRICS) + " |")
    lines.append(f"| real test images (probe ceiling) | {100 * ceiling['mean']:.1f} | "
                 f"{100 * ceiling['exact_match']:.1f} | 0 | |")
    lines.append(f"| chance (most frequent value) | {100 * chance['mean']:.1f} | "
                 f"{100 * chance['exact_match']:.1f} | | |")
    attrs = common.REPORTED_ATTRIBUTES
    pct = lambda acc: " | ".join(f"{100 * acc[k]:.1f}" for k in attrs)
    lines += ["", f"Per attribute (%), from the test captions' text embeddings and from the "
              f"test images' own image embeddings (the training condition: no modality gap), "
              f"{over}:", "",
              "| variant | from | " + " | ".join(attrs) + " |",
              "|---|---|" + "---|" * len(attrs)]
    for name in text:
        for source in GENERATED:
            row = agg[source][name]["per_attribute"]
            lines.append(f"| {name} | {source} | "
                         + " | ".join(stats.mean_pm_std(row[k]) for k in attrs) + " |")
    lines.append(f"| real test images | | {pct(ceiling)} |")
    lines.append(f"| chance | | {pct(chance)} |")
    for field, name in READOUT.items():
        lines.append(f"| linear readout of val {name} embeddings | | {pct(readout[field])} |")
    lines += ["", "What the gap costs: accuracy from the test captions less accuracy from the "
              "test images' own embeddings (the same generator), × 100, mean [95 % "
              "t-interval] over the seeds; it is established only where the interval "
              "excludes 0.", "",
              "| variant | mean | " + " | ".join(attrs) + " |",
              "|---|---|" + "---|" * len(attrs)]
    for name, row in gap.items():
        lines.append(f"| {name} | {interval_cell(row['mean'])} | "
                     + " | ".join(interval_cell(row[k]) for k in attrs) + " |")
    if paired:
        lines += ["", "Paired differences a − b of the images from text (same seed: same "
                  "data order and latents), mean [95 % t-interval] over the seeds "
                  "(attribute accuracy × 100; CLIP-space FD, lower is better); an ordering "
                  "holds only where the interval excludes 0.", "",
                  "| a − b | attribute acc. | CLIP-space FD |", "|---|---|---|"]
        for name, row in paired.items():
            lines.append(f"| {name} | {interval_cell(row['attribute_accuracy'])} | "
                         f"{interval_cell(row['clip_frechet_distance'], 1.0, 4)} |")
    return "\n".join(lines) + "\n"


def _samples_png(real, captions, rows: dict, wd: Workdir, count: int) -> str:
    grid = {"real": real[:count], **{n: r["images"][:count] for n, r in rows.items()}}
    return plots.image_grid(grid, captions[:count], wd.file("samples.png"))


def run_shapes_t2i(config, wd: Workdir) -> dict:
    """Connect -> generators trained on images only -> images from test captions."""
    model, params, world, _, dataset = common.connected_world(config, wd)
    encoder = _encoder(model, parallel.to_host(params))  # host arrays: any process count
    train_images, train_attrs = _split(world, "train")
    test_images, test_attrs = _split(world, "test")
    probe = attribute_probe.train_probe(train_images, train_attrs, steps=config.probe_steps,
                                        seed=config.seed)
    ceiling = attribute_probe.probe_accuracy(probe, test_images, test_attrs)
    logging.info("probe on real test images: %.3f mean attribute accuracy", ceiling["mean"])
    variants = common.variant_names(config.sweep.variants, VARIANTS)
    sweep_members = members(config, variants, dataset)
    done = _generators(config, dataset, sweep_members, encoder, wd)
    runs = {source: {} for source in GENERATED}
    for m in sweep_members:
        variant = m.name.rsplit("_seed", 1)[0]
        for source in GENERATED:
            runs[source].setdefault(variant, []).append(
                _scored(done[m.name], probe, test_attrs, source))
    agg = {source: aggregate(runs[source]) for source in GENERATED}
    gap = gap_cost(agg["text"], agg["image"])
    paired = paired_differences(agg["text"])
    chance = scenes.chance_accuracy(test_attrs)
    readout = condition_readout(dataset)
    table = results_table(agg, gap, paired, ceiling, chance, readout, config.sweep.seeds, config.seed)
    wd.write_text("RESULTS.md", "# Shapes world: images from test captions, generators "
                  "trained on images only\n\n" + table)
    print("\n" + table)
    test = builders.data_source(world, "test")
    captions = [cd.captions_of(test[i], "caption")[0]
                for i in range(min(config.eval.num_samples, len(test)))]
    first = {name: seeds[0] for name, seeds in runs["text"].items()}  # the first seed's
    _samples_png(test_images, captions, first, wd, config.eval.num_samples)
    return {"variants": agg["text"], "variants_from_images": agg["image"],
            "text_minus_image": gap, "paired": paired, "probe_ceiling": ceiling,
            "chance": chance, "seeds": config.sweep.seeds, "num_test": int(len(test_images)),
            "condition_readout": readout}
