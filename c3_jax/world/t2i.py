"""Text-to-image on the built-in world: the CLIP of Connect (shared with shapes_caption),
LAFITE StyleGAN2s trained on ``train`` images only, one per C^3 variant and generator seed
(``seeds`` of them, all in one sweep), images generated from ``test`` captions, scored by
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
from c3_jax.c3 import CLIP_SIGMA
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.models import stylegan2
from c3_jax.experiments import checks, stages
from c3_jax.experiments.schema import field_types
from c3_jax.experiments.t2i import default_config as generate_defaults
from c3_jax.train import caption_sweep, connect, gan_sweep, generation
from c3_jax.workdir import Workdir
from c3_jax.world import caption, common, scenes
from c3_jax.world import probe as attribute_probe


def default_generator(quick: bool = False) -> ml_collections.ConfigDict:
    """LAFITE's generator and discriminator: 32x32, 32 channels at most, 2 mapping layers.
    Settings that differ from StyleGAN2's and LAFITE's: RGB from the last resolution only
    ('orig', not 'skip'), batch 8 (more steps in the same time), Adam's lr 1e-2 (not 2.5e-3)
    and the itc weight 30 (not 10), chosen by the probe's shape accuracy on images drawn
    from the val images' embeddings (c3, seed 0, confirmed at seed 1; README, shapes_t2i)."""
    g = ml_collections.ConfigDict()
    g.z_dim, g.w_dim, g.mapping_layers, g.cond_hidden = 32, 64, 2, 64
    g.channel_base, g.channel_max = 512, 32
    g.architecture = "orig"  # or "skip"
    g.steps, g.batch, g.lr = 6000, 8, 1e-2
    g.r1_gamma, g.r1_every = 1.0, 16
    g.itd_weight, g.itc_weight = 5.0, 30.0
    g.ema_kimg = 2.0
    g.pl_weight, g.style_mixing = 2.0, 0.9  # LAFITE's path-length weight, style mixing
    # Collapse in the losses, as the official C^3 code by default: the image mean subtracted
    # twice in the training condition (collapse_twice) and the itc term on the generated
    # image's uncollapsed CLIP embedding (itc_space "clip"; "condition": through the
    # member's training transform). Both move the CLIP-space FD (docs/results/shapes_t2i.md).
    g.collapse_twice, g.itc_space = True, "clip"
    if quick:
        g.z_dim, g.w_dim, g.cond_hidden, g.channel_base, g.channel_max = 8, 16, 16, 128, 8
        g.steps, g.batch = 4, 8
        g.r1_every = 1  # R1 on every step: one compiled G+D program instead of two
        g.pl_weight = 0.0  # no path-length program to compile
    return g


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Every field of text-to-image on the world ('shapes_t2i') with its default: the main
    job's world and Connect; ``quick``: a tiny end-to-end check for tests."""
    main = caption.default_config(quick)
    c = ml_collections.ConfigDict()
    c.experiment = "shapes_t2i"
    c.seed = main.seed
    # Generator seeds per variant: seed, seed + 1, ... (members <variant>_seed<k> of one
    # sweep); a seed varies the generator's initialization, data order, latents and noise,
    # not the world, Connect or probe (those of `seed`).
    c.seeds = 1 if quick else 3
    c.variants = "c1,c2_collapse,c2_corrupt,c3"
    c.noise_sigma = CLIP_SIGMA
    c.calibration_pairs = main.method.calibration_pairs
    c.world, c.connect, c.generator = main.world, main.connect, default_generator(quick)
    c.probe_steps = 20 if quick else 800  # the attribute probe, trained on real images
    c.num_samples = 4 if quick else 10
    return c


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
    common.variant_names(config.variants, VARIANTS)
    checks.at_least(config, 1, [f"generator.{k}" for k in (
        "steps", "batch", "z_dim", "w_dim", "mapping_layers", "cond_hidden", "channel_base",
        "channel_max", "r1_every")] + ["seeds", "probe_steps", "num_samples"])
    checks.positive(config, ["generator.lr"])
    checks.one_of(config, "generator.architecture", stylegan2.ARCHITECTURES)
    checks.one_of(config, "generator.itc_space", generation.ITC_SPACES)
    checks.at_least(config, 0.0, ["noise_sigma"] + [f"generator.{k}" for k in (
        "r1_gamma", "itd_weight", "itc_weight", "ema_kimg", "pl_weight", "style_mixing")])
    checks.at_least(config, config.generator.batch, ["world.train_size"])
    checks.at_least(config, 2, ["calibration_pairs"])
    caption.calibration_fits(config, config, "")


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


def _generator_config(config, dataset: str):
    """The generators' shared settings (a sweep member gives variant, sigma and seed): the
    generation trainer's config filled from the nested ``generator`` config."""
    g = config.generator
    c = generate_defaults()
    c.update(dict(
        clip="", z_dim=g.z_dim, w_dim=g.w_dim, mapping_layers=g.mapping_layers,
        cond_hidden=g.cond_hidden, channel_base=g.channel_base, channel_max=g.channel_max,
        architecture=g.architecture,
        dataset_dir=dataset, batch_size=g.batch, max_steps=g.steps, lr=g.lr,
        r1_gamma=g.r1_gamma, r1_every=g.r1_every, itd_weight=g.itd_weight,
        itc_weight=g.itc_weight, ema_kimg=g.ema_kimg, ema_rampup=0.05, seed=config.seed,
        pl_weight=g.pl_weight, style_mixing=g.style_mixing,
        collapse_twice=g.collapse_twice, itc_space=g.itc_space,
        calibration_split="val", calibration_pairs=config.calibration_pairs,
        log_every=max(g.steps // 20, 1), checkpoint_every=g.steps,
        fid_protocol="paired", eval_max_examples=0, eval_batch_size=250,
        num_samples=config.num_samples))
    return c


def _split(world: str, split: str) -> tuple:
    """Images [n, R, R, 3] and attribute arrays of a world split."""
    rows = common.split_rows(world, split)
    return np.stack([np.asarray(r["image"]) for r in rows]), common.row_attributes(rows)


def members(config, variants: list, base) -> list:
    """The sweep's members ``<variant>_seed<k>``: every variant (``caption_sweep.NAMED``:
    its method and sigma kind) x ``seeds`` generator seeds from ``seed``."""
    named = {v: caption_sweep.NAMED[v] for v in variants}  # (method, field, sigma kind)
    calibrated = (caption_sweep.noise_model_of(base, base)["sigma"]
                  if any(named[v][2] == "calibrated" for v in variants) else None)
    return [m for v in variants for m in caption_sweep.member_grid(
        v, named[v][0], base.train_field,
        [calibrated if named[v][2] == "calibrated" else config.noise_sigma],
        config.seed, config.seeds, False)]


def _generators(config, dataset: str, members: list, encoder, wd: Workdir) -> dict:
    """{member: its Workdir, with results.json and generated_test.npy}: each cached in
    ``generators/<member>/``; those not done yet trained and sampled as one sweep per
    generator seed (its variants). The step unrolls a sweep's members
    (``gan_sweep.over_members``), so its compile time grows with their number: per seed,
    every sweep is the same program, compiled once and then read from the persistent
    compilation cache (a member's figures do not depend on the sweep it is in)."""
    base = _generator_config(config, dataset)
    shared = {"run": base.to_dict(), "upstream": common.connect_fields(config),
              "generated_from": list(GENERATED)}

    def train(pending, sweep_wd, outputs):
        sweep = gan_sweep.GanSweep(base, pending, sweep_wd, encoder)
        ema, summary = gan_sweep.train(sweep)
        results = {source: gan_sweep.evaluate(sweep, ema, base.eval_max_examples,
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
    variants = common.variant_names(config.variants, VARIANTS)
    sweep_members = members(config, variants, _generator_config(config, dataset))
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
    table = results_table(agg, gap, paired, ceiling, chance, readout, config.seeds, config.seed)
    wd.write_text("RESULTS.md", "# Shapes world: images from test captions, generators "
                  "trained on images only\n\n" + table)
    print("\n" + table)
    test = builders.data_source(world, "test")
    captions = [cd.captions_of(test[i], "caption")[0]
                for i in range(min(config.num_samples, len(test)))]
    first = {name: seeds[0] for name, seeds in runs["text"].items()}  # the first seed's
    _samples_png(test_images, captions, first, wd, config.num_samples)
    return {"variants": agg["text"], "variants_from_images": agg["image"],
            "text_minus_image": gap, "paired": paired, "probe_ceiling": ceiling,
            "chance": chance, "seeds": config.seeds, "num_test": int(len(test_images)),
            "condition_readout": readout}
