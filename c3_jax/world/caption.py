"""The built-in world, end to end: Connect (train a small CLIP) -> geometry of the learned
space -> captioners trained on text embeddings only, per C^3 variant and seed -> captions of
test images scored by COCO metrics and by attribute accuracy against the ground truth."""
from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np
from absl import logging

from c3_jax import plots, stats
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.eval.caption_metrics import Scorer
from c3_jax.experiments import caption as captioning
from c3_jax.experiments import checks, stages
from c3_jax.experiments.geometry_runs import pair_geometry
from c3_jax.experiments.schema import field_types
from c3_jax.models import gpt2
from c3_jax.train import caption_sweep
from c3_jax.workdir import Workdir
from c3_jax.world import common, scenes


def default_world_gpt2(quick: bool = False) -> ml_collections.ConfigDict:
    """The world's GPT-2, trained from scratch on its words (its config is written by the
    run, ``gpt2_dir``)."""
    g = ml_collections.ConfigDict()
    g.width = 32 if quick else 64
    g.depth = 1 if quick else 2
    g.heads = 4
    return g


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Every field of the main job ('shapes_caption') with its default; ``quick``: a tiny
    end-to-end check for tests (under a minute). The captioners' ``data``, ``captioner``,
    ``method``, ``eval`` and ``sweep`` are the captioning experiments' sub-configs
    (``c3_jax.experiments.caption.default_config``), with the world's values."""
    c = captioning.default_config("caption_sweep")
    c.experiment = "shapes_caption"
    c.seed = 0  # the world's, Connect's and the first captioner's
    c.world = common.default_world(quick)
    c.connect = common.default_connect(quick)
    c.world_gpt2 = default_world_gpt2(quick)
    # The world's dataset and GPT-2 directory: '' (what the run builds in its workdir).
    c.data.dataset_dir = ""
    c.captioner.gpt2 = ""
    c.data.max_caption_tokens = common.MAX_TOKENS  # the longest world caption fits
    c.data.truncate_captions = False
    c.captioner.gpt2_from_scratch = True
    c.captioner.prefix_length = 4
    c.captioner.max_steps = 10 if quick else 300
    c.captioner.batch_size = 32 if quick else 64
    c.captioner.lr = 3e-3
    c.captioner.warmup_steps = 2 if quick else 30
    c.captioner.log_every = 50
    # One checkpoint, at the end (follows max_steps unless set).
    c.captioner.checkpoint_every = c.captioner.get_ref("max_steps")
    c.captioner.val_batches = 4
    # 'c3_calibrated' (and 'c3_aniso') take sigma from the residual of the first
    # `calibration_pairs` val pairs (quick: all of its val pairs).
    c.method.calibration_pairs = 64 if quick else 100
    c.eval.max_decode_tokens = 8 if quick else 20
    c.eval.batch_size = 64 if quick else 250
    c.eval.spice = False
    c.sweep.variants = ("c1", "c2_collapse", "c2_corrupt", "c3", "c3_calibrated", "supervised",
                        "span_only")
    # Captioners of seed, seed + 1, ... (one sweep: one program). Five, so that the paired
    # 95 % interval of c3 - c1 excludes 0 in CIDEr and attribute accuracy (with three it
    # did not: [-8.7, +104.9] CIDEr); docs/results/shapes_caption.md.
    c.sweep.seeds = 1 if quick else 5
    return c


FIELDS = {"shapes_caption": field_types(default_config())}
VARIANTS = caption_sweep.NAMED  # variant -> (method, field, sigma: fixed | calibrated)
METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "attribute_accuracy",
           "exact_match")
# The orderings the main job reports, each as the paired difference a - b over seeds.
COMPARISONS = (("c3", "c1"), ("c3", "c2_corrupt"), ("c3", "c2_collapse"),
               ("c2_collapse", "c1"), ("c2_corrupt", "c1"), ("c2_corrupt", "span_only"),
               ("c3_calibrated", "c3"), ("supervised", "c3_calibrated"))
PAIRED_METRICS = ("CIDEr", "attribute_accuracy")
# Published COCO (Karpathy test) BLEU-4 / METEOR / CIDEr of the methods variants stand for.
PUBLISHED_COCO = {"c2_corrupt": ("CapDec", "26.4 / 25.1 / 91.8"),
                  "decap": ("DeCap", "24.7 / 25.0 / 91.2"),
                  "c3": ("C³", "27.7 / 25.0 / 93.3")}


def check(config) -> None:
    """Every value of a shapes_caption config, checked before any work."""
    common.check_world(config)
    captioning.check_settings(config)
    common.variant_names(config.sweep.variants, VARIANTS)
    checks.at_least(config, 1, ["world_gpt2.width", "world_gpt2.depth", "world_gpt2.heads"])
    checks.divides(config, "world_gpt2.heads", "world_gpt2.width")
    checks.at_least(config, config.captioner.batch_size, ["world.train_size"])
    checks.unset(config, ["data.dataset_dir", "captioner.gpt2", "captioner.restore_from",
                          "eval.official_checkpoint"],
                 "the world trains its captioners on the dataset and GPT-2 it builds")
    common.every_test_scene(config)
    if not config.eval.meteor:
        raise ValueError("config field 'eval.meteor' is False; the world's tables report "
                         "METEOR (leave it True)")
    calibration_fits(config)
    checks.java()


def calibration_fits(config) -> None:
    """σ is calibrated on the first ``method.calibration_pairs`` val pairs and c3_aniso's
    noise keeps ``method.noise_rank`` directions of the space: both must exist (checked
    before the world and Connect are built)."""
    method = config.method
    if method.calibration_pairs > config.world.val_size:
        raise ValueError(f"config field 'method.calibration_pairs' is {method.calibration_pairs} "
                         f"but the world has {config.world.val_size} val pairs "
                         "(world.val_size); lower one or raise the other")
    if method.noise_rank > config.connect.projection_dim:
        raise ValueError(f"config field 'method.noise_rank' is {method.noise_rank} but the space "
                         f"has {config.connect.projection_dim} dimensions "
                         "(connect.projection_dim); use at most that (0: all)")


def geometry_report(config, dataset: str, wd: Workdir) -> dict:
    """Effective dims, the gap, Table 1 statistics, the gap's structure and the residual's
    sigma on test pairs (each image with its first caption). The sigma captioners train
    with is calibrated on val pairs instead (``calibrated_sigma``)."""
    test = builders.data_source(dataset, "test")
    x = np.stack([np.asarray(test[i]["image_embedding"], np.float32) for i in range(len(test))])
    y = np.stack([np.asarray(test[i]["text_embedding"][0], np.float32) for i in range(len(test))])
    group = min(100, max(2, len(x) // 5))  # Table 1 uses groups of 100
    report = pair_geometry(x, y, wd, seed=config.seed, group_size=group,
                           calibration_pairs=config.method.calibration_pairs, gamma=0.99,
                           title="shapes world, learned CLIP space", names=("image", "text"))
    return report


def gpt2_dir(config, tokenizer, wd: Workdir) -> str:
    """A GPT-2 config (``world_gpt2``, trained from scratch) with the world's tokenizer."""
    path = wd.file("gpt2")
    g = config.world_gpt2
    fields = {**common.world_fields(config), "gpt2": g.to_dict()}
    if stages.begin(wd, "gpt2", fields, [path]):
        return path
    if wd.primary:
        gpt2.write_config_dir(path, tokenizer, g.width, g.depth, g.heads, 64)
    stages.finish(wd, "gpt2")
    return path


def calibrated_sigma(config, dataset: str) -> float:
    """Corrupt's sigma calibrated on the first ``calibration_pairs`` val pairs (each image
    with its first caption): ``captions.noise_model``'s, which c3_aniso's noise shares."""
    return caption_sweep.noise_model_of(common.with_dataset(config, dataset).data,
                                        config.method)["sigma"]


def members(config, dataset: str, sigmas=None) -> list:
    """The sweep: every variant (noisy ones at each of ``sigmas``, default the config's
    sigma; calibrated ones at ``calibrated_sigma``) x seed."""
    return caption_sweep.named_members(
        common.variant_names(config.sweep.variants, VARIANTS), config,
        sigmas or [config.method.noise_sigma], lambda: calibrated_sigma(config, dataset),
        bool(sigmas))


def train_captioners(config, dataset: str, gpt2_path: str, sweep_members: list,
                     wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """{member: its Workdir, with results.json and captions_test.json}: each member cached
    in ``captioners/<member>/``; those not done yet trained and decoded as one sweep. A
    member's stage is shaped by the captioning sub-configs (not by the sweep's list of
    members, nor by the variant and sigma the member carries), the world's GPT-2 and
    everything upstream. ``scorer``: the METEOR JVM the sweep's evaluation uses (else its
    own)."""
    run = common.with_dataset(config, dataset)
    run.captioner.gpt2 = gpt2_path
    shared = {"run": common.member_fields(run, "captioner"), "gpt2": config.world_gpt2.to_dict(),
              "upstream": common.connect_fields(config)}

    def train(pending, sweep_wd, outputs):
        sweep = caption_sweep.Sweep(run, pending, sweep_wd, scorer)
        params, summary = caption_sweep.train(sweep)
        results = caption_sweep.evaluate(sweep, params)
        refs = cd.eval_rows(builders.data_source(dataset, run.data.test_split),
                            run.data.eval_field, run.data.caption_field)[1]
        for m in pending:
            outputs[m.name].write_json("results.json", {**summary[m.name],
                                                        "metrics": results[m.name]["metrics"]})
            outputs[m.name].write_json("captions_test.json", [
                {"prediction": c, "references": r}
                for c, r in zip(results[m.name]["captions"], refs)])

    return stages.cached_members(wd, "captioner", sweep_members, shared, train)


def member_result(member_wd: Workdir, attrs: dict) -> dict:
    """A finished member's scores, with attribute accuracy against the ground truth."""
    result = member_wd.read_json("results.json")
    captions = [r["prediction"] for r in member_wd.read_json("captions_test.json")]
    acc = scenes.attribute_accuracy(captions, attrs)
    return {**result["metrics"], "attribute_accuracy": acc["mean"],
            "exact_match": acc["exact_match"], "per_attribute": acc, "captions": captions,
            "final_loss": result.get("final_loss")}


def _aggregate(runs: dict) -> dict:
    """{variant: {metric: {mean, std, per_seed}}} over seeds; per attribute too."""
    out = {}
    for name, seeds in runs.items():
        out[name] = {m: _over_seeds([r[m] for r in seeds]) for m in METRICS}
        out[name]["per_attribute"] = {k: _over_seeds([r["per_attribute"][k] for r in seeds])
                                      for k in common.REPORTED_ATTRIBUTES}
    return out


def _over_seeds(values) -> dict:
    return stats.mean_std(values)


def paired_differences(agg: dict) -> dict:
    """{'a − b': {metric: paired t-interval}} for each of ``COMPARISONS`` whose variants
    ran, over the seeds they share (members of one seed share their data order)."""
    out = {}
    for a, b in COMPARISONS:
        if a in agg and b in agg:
            out[f"{a} − {b}"] = {m: stats.paired_interval(agg[a][m]["per_seed"],
                                                          agg[b][m]["per_seed"])
                                 for m in PAIRED_METRICS}
    return out


def paired_table(paired: dict) -> str:
    """The markdown table of ``paired_differences``: mean [95 % interval] × 100 and what
    the intervals allow."""
    def cell(iv):
        if iv["low"] is None:
            return "n/a" if iv["mean"] is None else f"{100 * iv['mean']:+.1f} (one seed)"
        return f"{100 * iv['mean']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"
    lines = ["| a − b | " + " | ".join(PAIRED_METRICS) + " | what the intervals allow |",
             "|" + "---|" * (len(PAIRED_METRICS) + 2)]
    for name, row in paired.items():
        a, b = name.split(" − ")
        says = {stats.verdict(row[m]) for m in PAIRED_METRICS}
        claim = (f"{a} > {b}" if says == {"a > b"} else f"{a} < {b}" if says == {"a < b"}
                 else "not established on every metric")
        lines.append(f"| {name} | " + " | ".join(cell(row[m]) for m in PAIRED_METRICS)
                     + f" | {claim} |")
    return "\n".join(lines)


def _results_table(agg: dict, chance: dict, seeds: int, first_seed: int) -> str:
    """Scores per variant, the published COCO figure of the method a variant stands for, and
    accuracy per attribute, each with the chance row."""
    cell = stats.mean_pm_std
    published = lambda name: (f"{PUBLISHED_COCO[name][0]} {PUBLISHED_COCO[name][1]}"
                              if name in PUBLISHED_COCO else "")
    lines = ["| variant | " + " | ".join(METRICS) + " | published on COCO (B-4 / M / C) |",
             "|" + "---|" * (len(METRICS) + 2)]
    for name, row in agg.items():
        lines.append(f"| {name} | " + " | ".join(cell(row[m]) for m in METRICS)
                     + f" | {published(name)} |")
    lines.append("| chance (most frequent value) | " + " | ".join(
        "" if m not in ("attribute_accuracy", "exact_match") else
        f"{100 * chance['mean' if m == 'attribute_accuracy' else 'exact_match']:.1f}"
        for m in METRICS) + " | |")
    attrs = ["| variant | " + " | ".join(common.REPORTED_ATTRIBUTES) + " |",
             "|" + "---|" * (len(common.REPORTED_ATTRIBUTES) + 1)]
    for name, row in agg.items():
        attrs.append(f"| {name} | " + " | ".join(cell(row["per_attribute"][k])
                                                 for k in common.REPORTED_ATTRIBUTES) + " |")
    attrs.append("| chance (most frequent value) | " + " | ".join(
        f"{100 * chance[k]:.1f}" for k in common.REPORTED_ATTRIBUTES) + " |")
    over = (f"mean ± sample std (ddof = 1) over {seeds} captioner seeds {first_seed}.."
            f"{first_seed + seeds - 1} (a seed varies the captioner's initialization, data "
            f"order and noise; the world and Connect are those of seed {first_seed})"
            if seeds > 1 else f"seed {first_seed}")
    return (f"Scores × 100 on the test split, {over}. The last column is the published "
            "COCO result of the method the variant stands for, for orientation only: this "
            "world is not COCO.\n\n" + "\n".join(lines)
            + f"\n\nAccuracy per attribute × 100 (scenes where it applies), {over}.\n\n"
            + "\n".join(attrs) + "\n\nPaired differences × 100 (same seed: same data "
            "order), mean [95 % t-interval] over the seeds; an ordering holds only where "
            "the interval excludes 0.\n\n" + paired_table(paired_differences(agg)) + "\n")


def _samples_png(dataset: str, world: str, runs: dict, wd: Workdir, count: int = 8) -> str:
    src = builders.data_source(world, "test")
    images = [np.asarray(src[i]["image"]) for i in range(count)]
    captions = {name: seeds[0]["captions"][:count] for name, seeds in runs.items()}
    truth = [cd.captions_of(src[i], "caption")[0] for i in range(count)]
    return plots.captioned_images(images, {"truth": truth, **captions}, wd.file("samples.png"))


def run_shapes_caption(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """Connect -> Collapse -> Corrupt on the built-in world; see the module docstring
    (``scorer``: a METEOR JVM to use, a caller's shared by its runs; else one of its own)."""
    model, params, world, tokenizer, dataset = common.connected_world(config, wd)
    geometry = geometry_report(config, dataset, wd)
    # The criterion the Connect recipe was chosen by (the Connect study's): val pairs.
    geometry["val"] = common.val_geometry(config, model, params, world, tokenizer, wd)
    sigma = calibrated_sigma(config, dataset)
    logging.info("learned space: gap %.3f, effective dims %d / %d, sigma calibrated %.4f "
                 "(val pairs)", geometry["modality_gap"], geometry["effective_dim_x"],
                 geometry["effective_dim_y"], sigma)
    gpt2_path = gpt2_dir(config, tokenizer, wd)
    attrs = common.test_attributes(dataset)
    sweep_members = members(config, dataset)
    done = train_captioners(config, dataset, gpt2_path, sweep_members, wd, scorer)
    runs = {}
    for m in sweep_members:
        runs.setdefault(m.name.rsplit("_seed", 1)[0], []).append(
            member_result(done[m.name], attrs))
    agg = _aggregate(runs)
    chance = scenes.chance_accuracy(attrs)
    table = _results_table(agg, chance, config.sweep.seeds, config.seed)
    wd.write_text("RESULTS.md", "# Shapes world: captioning images from text-only "
                  "training\n\n" + table)
    print("\n" + table)
    _samples_png(dataset, world, runs, wd)
    return {"variants": agg, "paired": paired_differences(agg), "chance": chance,
            "geometry": geometry,
            "sigma_calibrated": sigma, "sigma_fixed": config.method.noise_sigma,
            "seeds": config.sweep.seeds, "num_test": int(len(attrs["shape"]))}
