"""Captioning experiments: a captioner trained on one modality's embeddings and evaluated
on another's ('caption'), and its sensitivity to the gap ('caption_gap_sensitivity')."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from c3_jax import c3, geometry, plots, stats
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.eval.caption_metrics import rouge_n, score_captions
from c3_jax.experiments import checks
from c3_jax.experiments.schema import field_types
from c3_jax.models import clipcap, clipcap_import, gpt2, hf_import
from c3_jax.train import caption_sweep, loop
from c3_jax.workdir import Workdir


def default_config(experiment: str = "caption") -> ml_collections.ConfigDict:
    """Every field of the captioning experiments with its default: the paper's COCO setup
    (config files start from it and change what differs)."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    # Model: CLIP ViT-B/32 (512-d) -> MLP mapper -> 10-token prefix -> GPT-2 small, fine-tuned.
    c.gpt2, c.gpt2_from_scratch, c.freeze_gpt = "checkpoints/gpt2", False, False
    c.mapper, c.prefix_length, c.clip_length, c.mapper_depth = "mlp", 10, 10, 8
    c.dtype = "float32"
    # Data: a dataset written by c3_jax.embed.extract_coco (Karpathy split, restval in train).
    c.dataset_dir = "data/coco_karpathy_clip/1.0.0"
    c.train_split, c.val_split, c.test_split = "train", "val", "test"
    c.train_field, c.eval_field, c.caption_field = "text_embedding", "image_embedding", "caption"
    c.max_caption_tokens, c.truncate_captions, c.train_fraction = 40, True, 1.0
    # Training: AdamW lr 2e-5, 5000 warmup steps then linear decay, batch 40, 10 epochs.
    c.variant, c.noise_sigma = "c3", c3.CLIP_SIGMA  # variant: any of c3.METHODS
    # The calibrated sigma and c3_aniso's noise model: the residual of the first
    # `calibration_pairs` (eval_field, train_field) pairs of `calibration_split`; the noise
    # keeps its top `noise_rank` directions + a diagonal (0: the full covariance).
    c.calibration_split, c.calibration_pairs, c.noise_rank = "val", 500, 0
    c.sigma_from_calibration = False  # True: noise_sigma is ignored for the calibrated sigma
    # decap: the memory is the first `decap_memory` train_field embeddings of the training
    # split (0: all of them), projected onto at softmax temperature `decap_temperature`.
    c.decap_temperature, c.decap_memory = c3.DECAP_TEMPERATURE, 0
    c.batch_size, c.num_epochs, c.max_steps = 40, 10, 0
    c.lr, c.warmup_steps, c.weight_decay, c.grad_accum = 2e-5, 5000, 0.01, 1
    # 'warmup_linear_decay' (ClipCap's scheduler) or 'constant' (no scheduler).
    c.lr_schedule = "warmup_linear_decay"
    # True: warmup_steps * train_fraction warmup updates (the official stage-2 run.py).
    c.warmup_scales_with_fraction = False
    # False: no normalization after mean removal and noise (the official stage 2).
    c.renormalize = True
    c.fsdp, c.seed = 1, 0
    c.log_every, c.checkpoint_every, c.keep_checkpoints, c.val_batches = 100, 5000, 2, 50
    # best/ keeps the checkpoint of the lowest 'val_loss' (val_batches batches) or of the
    # highest 'val_rouge_l' (captions of the first val_decode_examples val rows).
    c.best_by, c.val_decode_examples = "val_loss", 1000
    c.init_from, c.restore_from = "", ""
    # Evaluation only, of an official ClipCap / CapDec / C3 captioner: its state-dict file
    # (.pt / .pth / .ckpt / .safetensors; c3_jax.models.clipcap_import); '': train one.
    c.official_checkpoint = ""
    c.skip_nonfinite = False  # True: a step with NaN/Inf loss or gradients is skipped
    # LM head over caption positions: all at once (0), or this many positions at a time,
    # recomputed in the backward pass (the [B, L, vocab] logits never exist whole).
    c.loss_chunk = 0
    # Evaluation: greedy decoding up to 67 tokens, stopping at EOS or '.', like the reference.
    c.decode, c.beam_size, c.max_decode_tokens, c.stop_at_period = "greedy", 5, 67, True
    c.eval_batch_size, c.eval_max_examples, c.spice = 256, 0, True
    c.meteor = True  # False: no METEOR (its JVM needs 2 GB and ~5 s to load its tables)
    if experiment == "caption_sweep":  # variants x sigmas x seeds trained as one program
        c.variants = "c1,c2_collapse,c2_corrupt,c3"  # 'supervised': c1 on eval_field
        c.sigmas = ""  # comma-separated noise sigmas of the noisy variants; '': noise_sigma
        c.seeds = 3  # seeds seed, seed + 1, ...
    if experiment == "caption_gap_sensitivity":
        c.variant = "c1"
        c.shift_norms = "0,0.2,0.4,0.6,0.8,1.0,1.5,2.0"  # Table 6
        c.shift_gamma = 0.99
    return c


FIELDS = {name: field_types(default_config(name))
          for name in ("caption", "caption_gap_sensitivity", "caption_sweep")}


def single_run(config, wd: Workdir) -> caption_sweep.Sweep:
    """The config's one captioner (its variant, seed, sigma and training field) as a sweep
    of one member, named after its variant."""
    member = caption_sweep.Member(config.variant, config.variant, config.seed,
                                  caption_sweep.sigma_of(config), config.train_field)
    return caption_sweep.Sweep(config, [member], wd)


def train_or_restore(sweep: caption_sweep.Sweep) -> tuple:
    """(params with a member axis, the run's summary): an official checkpoint's or another
    run's params (evaluation only), or the captioner trained here."""
    config = sweep.config
    if config.official_checkpoint:  # evaluation only: checked by check_official
        params = clipcap_import.load_params(config.official_checkpoint, sweep.model, sweep.dim)
        return (caption_sweep.one_member(sweep, params),
                {"official_checkpoint": config.official_checkpoint})
    if config.restore_from:
        return (caption_sweep.restore_params(sweep, config.restore_from),
                {"restored_from": config.restore_from})
    params, summary = caption_sweep.train(sweep)
    return params, summary[sweep.members[0].name]


def check(config) -> None:
    """Every value of a captioning config, checked before any work."""
    c3.check_method(config.variant)
    checks.at_least(config, 1, ["batch_size", "num_epochs", "grad_accum", "fsdp", "log_every",
                                "checkpoint_every", "keep_checkpoints", "prefix_length",
                                "clip_length", "max_caption_tokens", "max_decode_tokens",
                                "eval_batch_size", "beam_size"])
    checks.at_least(config, 1, ["val_decode_examples"])
    checks.at_least(config, 0, ["max_steps", "warmup_steps", "val_batches",
                                "eval_max_examples", "loss_chunk", "noise_rank", "decap_memory"])
    checks.at_least(config, 2, ["calibration_pairs"])
    checks.at_least(config, 0.0, ["noise_sigma", "weight_decay", "lr"])  # lr 0: evaluation
    checks.positive(config, ["decap_temperature"])
    checks.within(config, 0.0, 1.0, ["train_fraction"])
    if config.lr_schedule not in ("warmup_linear_decay", "constant"):
        raise ValueError(f"config field 'lr_schedule' is {config.lr_schedule!r}; use "
                         "'warmup_linear_decay' or 'constant'")
    if config.best_by not in ("val_loss", "val_rouge_l"):
        raise ValueError(f"config field 'best_by' is {config.best_by!r}; use 'val_loss' or "
                         "'val_rouge_l'")
    if config.decode not in ("greedy", "beam"):
        raise ValueError(f"config field 'decode' is {config.decode!r}; use 'greedy' or 'beam'")
    checks.existing(config.dataset_dir, "dataset_dir")
    checks.existing(config.gpt2, "gpt2")
    checks.tokenizer_fits(config.gpt2, "gpt2")
    for field in ("init_from", "restore_from"):
        if config[field]:
            checks.existing(config[field], field)
    if config.official_checkpoint:
        check_official(config)
    if config.experiment == "caption_gap_sensitivity":
        _floats(config.shift_norms, "shift_norms")
    if config.experiment == "caption_sweep":
        checks.at_least(config, 1, ["seeds"])
        if config.restore_from:
            raise ValueError("config field 'restore_from' evaluates one captioner; use the "
                             "'caption' experiment (a sweep may start from one: init_from)")
        caption_sweep.check_members(sweep_members(config))
    checks.java()


def check_official(config) -> None:
    """An official checkpoint's keys and shapes against the captioner the config builds for
    the dataset's ``eval_field`` width (no tensor read)."""
    for field in ("init_from", "restore_from"):
        if config[field]:
            raise ValueError(f"config fields 'official_checkpoint' and {field!r} are both set; "
                             "keep one")
    if config.experiment == "caption_sweep":
        raise ValueError("config field 'official_checkpoint' evaluates one captioner; use the "
                         "'caption' experiment (configs/coco_caption.py:official)")
    checks.existing(config.official_checkpoint, "official_checkpoint")
    row = builders.data_source(config.dataset_dir, config.test_split)[0]
    if config.eval_field not in row:
        raise ValueError(f"config field 'eval_field' is {config.eval_field!r}, which the "
                         f"{config.test_split!r} split of {config.dataset_dir} does not have")
    mapper = clipcap.MapperConfig(config.mapper, config.prefix_length, config.clip_length,
                                  config.mapper_depth)
    gpt = gpt2.GPT2Config.from_hf(hf_import.read_config(config.gpt2))
    clipcap_import.check_file(config.official_checkpoint, mapper, gpt,
                              np.shape(row[config.eval_field])[-1])


def run_caption(config, wd: Workdir) -> dict:
    """Train on ``train_field`` (text: uni-modal), evaluate on ``eval_field`` (images); the
    last params are evaluated (``checkpoints`` keep the best by ``best_by`` beside them)."""
    sweep = single_run(config, wd)
    params, summary = train_or_restore(sweep)
    marks = []
    result = caption_sweep.evaluate(sweep, params, marks)[sweep.members[0].name]
    _plot_loss(wd)
    return {**summary, "metrics": result["metrics"], "num_test": len(result["captions"]),
            **loop.pace(marks, "decode_batch"), "samples": result["samples"],
            "variant": config.variant, "sigma": sweep.members[0].sigma}


def run_gap_sensitivity(config, wd: Workdir) -> dict:
    """Appendix G / Table 6: trained on ``train_field``, evaluated on the test split's same
    modality shifted by a constant c orthogonal to its span, for each |c|."""
    sweep = single_run(config, wd)
    params, summary = train_or_restore(sweep)
    source = builders.data_source(config.dataset_dir, config.test_split)
    embeddings, _ = cd.eval_rows(source, config.train_field, config.caption_field,
                                 config.eval_max_examples)
    own = [[r] for r in _first_captions(source, config)]
    own_modality = sweep.moments[config.train_field]  # met at inference here
    centroid = cd.method_centroid(config.variant, sweep.train_source, config.train_field,
                                  own_modality, own_modality)
    settings = caption_sweep.stack_settings([c3.member_settings(
        config.variant, config.noise_sigma, own_modality, own_modality, centroid=centroid)]
        * sweep.size)
    unit = geometry.orthogonal_shift(np.asarray(c3.normalize(embeddings)), 1.0,
                                     jax.random.key(config.seed), config.shift_gamma)
    rows = {}
    for norm in _floats(config.shift_norms, "shift_norms"):
        captions = caption_sweep.generate(sweep, params, embeddings, settings,
                                          shift=norm * unit)[0]
        scores = score_captions(dict(enumerate(captions)), dict(enumerate(own)), spice=False)
        rows[f"{norm:g}"] = {"ROUGE-1": rouge_n(captions, own, 1), "ROUGE-L": scores["ROUGE-L"],
                             "METEOR": scores["METEOR"], "sample": captions[0]}
    _plot_gap_sensitivity(rows, wd)
    return {**summary, "by_gap_distance": rows}


def _first_captions(source, config) -> list:
    n = len(source) if config.eval_max_examples <= 0 else min(config.eval_max_examples,
                                                                len(source))
    return [cd.captions_of(source[i], config.caption_field)[0] for i in range(n)]


def _floats(text: str, field: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{field}={text!r} must be comma-separated numbers") from None


def sweep_members(config) -> list:
    """The members of a caption_sweep: every variant x sigma (noisy variants) x seed
    (``caption_sweep.NAMED``: 'supervised' is c1 trained on ``eval_field``, the paired upper
    bound; 'c3_calibrated' and 'c3_aniso' use the calibrated sigma)."""
    sigmas = _floats(config.sigmas, "sigmas") or [config.noise_sigma]
    names = [v.strip() for v in config.variants.split(",") if v.strip()]
    return caption_sweep.named_members(
        names, config, sigmas, lambda: caption_sweep.noise_model_of(config)["sigma"],
        len(sigmas) > 1)


def run_caption_sweep(config, wd: Workdir) -> dict:
    """Every member of ``sweep_members`` trained and evaluated as one program; scores per
    member and, per variant (and sigma), their mean and sample std (ddof = 1) over seeds."""
    sweep = caption_sweep.Sweep(config, sweep_members(config), wd)
    params, summary = caption_sweep.train(sweep)
    results = caption_sweep.evaluate(sweep, params)
    groups = {}
    for m in sweep.members:
        groups.setdefault(m.name.rsplit("_seed", 1)[0], []).append(results[m.name]["metrics"])
    table = {g: {k: stats.mean_std([r[k] for r in rows])
                 for k, v in rows[0].items() if isinstance(v, (int, float))}
             for g, rows in groups.items()}
    return {"members": {n: {**summary[n], "metrics": r["metrics"],
                            "samples": r["captions"][:5]} for n, r in results.items()},
            "by_variant": table, "seeds": config.seeds}


def _plot_loss(wd: Workdir) -> None:
    rows = [r for r in wd.read_metrics() if "loss" in r]
    if rows:
        plots.curves({"train loss": ([r["step"] for r in rows], [r["loss"] for r in rows])},
                     "step", "caption loss", wd.file("loss.png"))


def _plot_gap_sensitivity(rows: dict, wd: Workdir) -> None:
    norms = [float(k) for k in rows]
    plots.curves({m: (norms, [rows[k][m] for k in rows]) for m in ("ROUGE-1", "ROUGE-L", "METEOR")},
                 "gap distance |c|", "score", wd.file("gap_sensitivity.png"))
