"""Captioning experiments: a captioner trained on one modality's embeddings and evaluated
on another's ('caption'), and its sensitivity to the gap ('caption_gap_sensitivity')."""
from __future__ import annotations

import contextlib
from typing import Optional

import jax
import ml_collections
import numpy as np

from c3_jax import c3, geometry, parallel, plots, stats
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.eval.caption_metrics import Scorer, rouge_n, score_captions
from c3_jax.experiments import checks
from c3_jax.experiments.schema import field_types, floats, names
from c3_jax.models import clipcap, clipcap_import, gpt2, hf_import
from c3_jax.train import caption_sweep, loop
from c3_jax.workdir import Workdir


def default_config(experiment: str = "caption") -> ml_collections.ConfigDict:
    """Every field of the captioning experiments with its default: the paper's COCO setup
    (config files, and the built-in world's captioning, start from it and change what
    differs). Sub-configs: ``data``, ``captioner`` (model and training), ``method`` (the C^3
    step), ``eval``; ``sweep`` for sweeps, ``gap`` for the gap sensitivity."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    c.seed = 0  # the captioner's (a sweep's first seed)
    c.data = default_data()
    c.captioner = default_captioner()
    c.method = default_method()
    c.eval = default_eval()
    if experiment == "caption_sweep":  # variants x sigmas x seeds trained as one program
        c.sweep = default_sweep()
    if experiment == "caption_gap_sensitivity":
        c.method.variant = "c1"
        c.gap = ml_collections.ConfigDict()
        c.gap.shift_norms = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)  # |c| of Table 6
        c.gap.shift_gamma = 0.99  # the span's share of variance the shift is orthogonal to
    return c


def default_data() -> ml_collections.ConfigDict:
    """A dataset written by c3_jax.embed.extract_coco (Karpathy split, restval in train)."""
    d = ml_collections.ConfigDict()
    d.dataset_dir = "data/coco_karpathy_clip/1.0.0"
    d.train_split = "train"
    d.val_split = "val"  # '': no validation
    d.test_split = "test"
    d.train_field = "text_embedding"  # what the captioner learns from (text: uni-modal)
    d.eval_field = "image_embedding"  # what it captions at test time
    d.caption_field = "caption"
    d.max_caption_tokens = 40
    d.truncate_captions = True  # False: a longer caption is an error
    d.train_fraction = 1.0  # share of the training rows used (semi-supervised stage 2)
    return d


def default_captioner() -> ml_collections.ConfigDict:
    """CLIP ViT-B/32 (512-d) -> MLP mapper -> 10-token prefix -> GPT-2 small, fine-tuned;
    AdamW lr 2e-5, 5000 warmup steps then linear decay, batch 40, 10 epochs."""
    t = ml_collections.ConfigDict()
    t.gpt2 = "checkpoints/gpt2"  # a Hugging Face GPT-2 directory (config, weights, tokenizer)
    t.gpt2_from_scratch = False  # True: its config only, randomly initialised
    t.freeze_gpt = False  # True: train the mapper only
    t.mapper = "mlp"  # 'mlp' or 'transformer' (ClipCap's)
    t.prefix_length = 10
    t.clip_length = 10  # the transformer mapper's learned constant tokens
    t.mapper_depth = 8  # the transformer mapper's layers
    t.dtype = "float32"
    t.batch_size = 40
    t.num_epochs = 10
    t.max_steps = 0  # > 0: this many steps instead of num_epochs
    t.lr = 2e-5
    t.lr_schedule = "warmup_linear_decay"  # ClipCap's scheduler, or 'constant'
    t.warmup_steps = 5000
    t.warmup_scales_with_fraction = False  # True: warmup_steps x data.train_fraction
    t.weight_decay = 0.01
    t.grad_accum = 1
    # LM head over caption positions: all at once (0), or this many positions at a time,
    # recomputed in the backward pass (the [B, L, vocab] logits never exist whole).
    t.loss_chunk = 0
    t.skip_nonfinite = False  # True: a step with NaN/Inf loss or gradients is skipped
    t.fsdp = 1  # devices each captioner's params are sharded over
    t.log_every = 100
    t.checkpoint_every = 5000
    t.keep_checkpoints = 2
    t.val_batches = 50  # batches of the val split per validation (0: none)
    # best/ keeps the checkpoint of the lowest 'val_loss' or of the highest 'val_rouge_l'
    # (captions of the first val_decode_examples val rows).
    t.best_by = "val_loss"
    t.val_decode_examples = 1000
    t.init_from = ""  # a run's workdir to start from (fine-tuning)
    t.restore_from = ""  # a run's workdir to evaluate, with no training
    return t


def default_method() -> ml_collections.ConfigDict:
    """The C^3 step between the embeddings and the captioner (c3.member_settings)."""
    m = ml_collections.ConfigDict()
    m.variant = "c3"  # any of c3.METHODS (a single run's; a sweep names sweep.variants)
    m.noise_sigma = c3.CLIP_SIGMA  # Corrupt's sigma (the paper's sqrt(0.016))
    m.sigma_from_calibration = False  # True: the calibrated sigma instead of noise_sigma
    # The calibrated sigma and c3_aniso's noise model: the residual of the first
    # `calibration_pairs` (eval_field, train_field) pairs of `calibration_split`; the noise
    # keeps its top `noise_rank` directions + a diagonal (0: the full covariance).
    m.calibration_split = "val"
    m.calibration_pairs = 500
    m.noise_rank = 0
    m.renormalize = True  # False: no normalization after mean removal and noise (stage 2)
    # decap: the memory is the first `decap_memory` train_field embeddings of the training
    # split (0: all of them), projected onto at softmax temperature `decap_temperature`.
    m.decap_temperature = c3.DECAP_TEMPERATURE
    m.decap_memory = 0
    return m


def default_eval() -> ml_collections.ConfigDict:
    """Greedy decoding up to 67 tokens, stopping at EOS or '.', like the reference."""
    e = ml_collections.ConfigDict()
    e.decode = "greedy"  # or 'beam'
    e.beam_size = 5
    e.max_decode_tokens = 67
    e.stop_at_period = True
    e.batch_size = 256
    e.max_examples = 0  # test rows captioned (0: all)
    e.spice = True
    e.meteor = True  # False: no METEOR (its JVM needs 2 GB and ~5 s to load its tables)
    # Evaluation only, of an official ClipCap / CapDec / C3 captioner: its state-dict file
    # (.pt / .pth / .ckpt / .safetensors; c3_jax.models.clipcap_import); '': train one.
    e.official_checkpoint = ""
    return e


def default_sweep() -> ml_collections.ConfigDict:
    """Members: every variant x sigma (noisy variants) x seed, trained as one program."""
    s = ml_collections.ConfigDict()
    s.variants = ("c1", "c2_collapse", "c2_corrupt", "c3")  # caption_sweep.NAMED's names
    s.sigmas = ()  # noise sigmas of the noisy variants; (): method.noise_sigma
    s.seeds = 3  # seeds seed, seed + 1, ...
    return s


FIELDS = {name: field_types(default_config(name))
          for name in ("caption", "caption_gap_sensitivity", "caption_sweep")}


def single_run(config, wd: Workdir, scorer: Optional[Scorer] = None) -> caption_sweep.Sweep:
    """The config's one captioner (its variant, seed, sigma and training field) as a sweep
    of one member, named after its variant (``scorer``: the sweep's METEOR JVM)."""
    variant = config.method.variant
    member = caption_sweep.Member(variant, variant, config.seed,
                                  caption_sweep.sigma_of(config.data, config.method),
                                  config.data.train_field)
    return caption_sweep.Sweep(config, [member], wd, scorer)


def train_or_restore(sweep: caption_sweep.Sweep) -> tuple:
    """(params with a member axis, the run's summary): an official checkpoint's or another
    run's params (evaluation only), or the captioner trained here."""
    official = sweep.config.eval.official_checkpoint
    restore_from = sweep.config.captioner.restore_from
    if official:  # evaluation only: checked by check_official
        params = clipcap_import.load_params(official, sweep.model, sweep.dim)
        return caption_sweep.one_member(sweep, params), {"official_checkpoint": official}
    if restore_from:
        return (caption_sweep.restore_params(sweep, restore_from),
                {"restored_from": restore_from})
    params, summary = caption_sweep.train(sweep)
    return params, summary[sweep.members[0].name]


def check_settings(config) -> None:
    """The values of the ``data``, ``captioner``, ``method`` and ``eval`` sub-configs (the
    built-in world's captioners too), checked before any work; files are ``check``'s."""
    c3.check_method(config.method.variant)
    checks.at_least(config, 1, [
        "data.max_caption_tokens", "captioner.batch_size", "captioner.num_epochs",
        "captioner.grad_accum", "captioner.fsdp", "captioner.log_every",
        "captioner.checkpoint_every", "captioner.keep_checkpoints", "captioner.prefix_length",
        "captioner.clip_length", "captioner.val_decode_examples", "eval.max_decode_tokens",
        "eval.batch_size", "eval.beam_size"])
    checks.at_least(config, 0, ["captioner.max_steps", "captioner.warmup_steps",
                                "captioner.val_batches", "captioner.loss_chunk",
                                "method.noise_rank", "method.decap_memory", "eval.max_examples"])
    checks.at_least(config, 2, ["method.calibration_pairs"])
    # lr 0: evaluation only
    checks.at_least(config, 0.0, ["method.noise_sigma", "captioner.weight_decay", "captioner.lr"])
    checks.positive(config, ["method.decap_temperature"])
    checks.within(config, 0.0, 1.0, ["data.train_fraction"])
    checks.one_of(config, "captioner.lr_schedule", ("warmup_linear_decay", "constant"))
    checks.one_of(config, "captioner.best_by", ("val_loss", "val_rouge_l"))
    checks.one_of(config, "eval.decode", ("greedy", "beam"))
    if "sweep" in config:
        checks.at_least(config, 1, ["sweep.seeds"])
        floats(config.sweep.sigmas, "sweep.sigmas")
        checks.unread_by_sweeps(config, default_method())


def check(config) -> None:
    """Every value of a captioning config, its files and tools, checked before any work."""
    check_settings(config)
    cap = config.captioner
    checks.existing(config.data.dataset_dir, "data.dataset_dir")
    checks.existing(cap.gpt2, "captioner.gpt2")
    checks.tokenizer_fits(cap.gpt2, "captioner.gpt2")
    for field in ("init_from", "restore_from"):
        if cap[field]:
            checks.existing(cap[field], f"captioner.{field}")
    if config.eval.official_checkpoint:
        check_official(config)
    if config.experiment == "caption_gap_sensitivity":
        floats(config.gap.shift_norms, "gap.shift_norms")
    if config.experiment == "caption_sweep":
        if cap.restore_from:
            raise ValueError("config field 'captioner.restore_from' evaluates one captioner; "
                             "use the 'caption' experiment (a sweep may start from one: "
                             "captioner.init_from)")
        caption_sweep.check_members(sweep_members(config))
    checks.java()


def check_official(config) -> None:
    """An official checkpoint's keys and shapes against the captioner the config builds for
    the dataset's ``eval_field`` width (no tensor read)."""
    data, cap, path = config.data, config.captioner, config.eval.official_checkpoint
    for field in ("init_from", "restore_from"):
        if cap[field]:
            raise ValueError("config fields 'eval.official_checkpoint' and "
                             f"'captioner.{field}' are both set; keep one")
    if config.experiment == "caption_sweep":
        raise ValueError("config field 'eval.official_checkpoint' evaluates one captioner; use "
                         "the 'caption' experiment (configs/coco_caption.py:official)")
    checks.existing(path, "eval.official_checkpoint")
    row = builders.data_source(data.dataset_dir, data.test_split)[0]
    if data.eval_field not in row:
        raise ValueError(f"config field 'data.eval_field' is {data.eval_field!r}, which the "
                         f"{data.test_split!r} split of {data.dataset_dir} does not have")
    mapper = clipcap.MapperConfig(cap.mapper, cap.prefix_length, cap.clip_length,
                                  cap.mapper_depth)
    gpt = gpt2.GPT2Config.from_hf(hf_import.read_config(cap.gpt2))
    clipcap_import.check_file(path, mapper, gpt, np.shape(row[data.eval_field])[-1])


def run_caption(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """Train on ``train_field`` (text: uni-modal), evaluate on ``eval_field`` (images); the
    last params are evaluated (``checkpoints`` keep the best by ``best_by`` beside them).
    ``scorer``: a METEOR JVM to use (a caller's, shared by its runs), else one of its own."""
    sweep = single_run(config, wd, scorer)
    params, summary = train_or_restore(sweep)
    marks = []
    result = caption_sweep.evaluate(sweep, params, marks)[sweep.members[0].name]
    _plot_loss(wd)
    return {**summary, "metrics": result["metrics"], "num_test": len(result["captions"]),
            **loop.pace(marks, "decode_batch"), "samples": result["samples"],
            "variant": config.method.variant, "sigma": sweep.members[0].sigma}


def run_gap_sensitivity(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """Appendix G / Table 6: trained on ``train_field``, evaluated on the test split's same
    modality shifted by a constant c orthogonal to its span, for each |c| (``scorer``: as
    ``run_caption``'s)."""
    sweep = single_run(config, wd, scorer)
    params, summary = train_or_restore(sweep)
    data, method = config.data, config.method
    source = builders.data_source(data.dataset_dir, data.test_split)
    embeddings, _ = cd.eval_rows(source, data.train_field, data.caption_field,
                                 config.eval.max_examples)
    own = [[r] for r in _first_captions(source, config)]
    own_modality = sweep.moments[data.train_field]  # met at inference here
    centroid = cd.method_centroid(method.variant, sweep.train_source, data.train_field,
                                  own_modality, own_modality)
    settings = caption_sweep.stack_settings([c3.member_settings(
        method.variant, method.noise_sigma, own_modality, own_modality, centroid=centroid)]
        * sweep.size)
    unit = geometry.orthogonal_shift(np.asarray(c3.normalize(embeddings)), 1.0,
                                     jax.random.key(config.seed), config.gap.shift_gamma)
    rows = {}
    with contextlib.nullcontext(scorer) if scorer else Scorer() as scorer:  # one for all
        for norm in floats(config.gap.shift_norms, "gap.shift_norms"):
            captions = caption_sweep.generate(sweep, params, embeddings, settings,
                                              shift=norm * unit)[0]
            scores = parallel.on_process_zero(lambda: score_captions(  # one METEOR JVM
                dict(enumerate(captions)), dict(enumerate(own)), spice=False, scorer=scorer))
            rows[f"{norm:g}"] = {"ROUGE-1": rouge_n(captions, own, 1),
                                 "ROUGE-L": scores["ROUGE-L"], "METEOR": scores["METEOR"],
                                 "sample": captions[0]}
    _plot_gap_sensitivity(rows, wd)
    return {**summary, "by_gap_distance": rows}


def _first_captions(source, config) -> list:
    limit = config.eval.max_examples
    n = len(source) if limit <= 0 else min(limit, len(source))
    return [cd.captions_of(source[i], config.data.caption_field)[0] for i in range(n)]


def sweep_members(config) -> list:
    """The members of a caption_sweep: every variant x sigma (noisy variants) x seed
    (``caption_sweep.NAMED``: 'supervised' is c1 trained on ``eval_field``, the paired upper
    bound; 'c3_calibrated' and 'c3_aniso' use the calibrated sigma)."""
    sigmas = floats(config.sweep.sigmas, "sweep.sigmas") or [config.method.noise_sigma]
    return caption_sweep.named_members(
        names(config.sweep.variants, "sweep.variants"), config, sigmas,
        lambda: caption_sweep.noise_model_of(config.data, config.method)["sigma"],
        len(sigmas) > 1)


def run_caption_sweep(config, wd: Workdir, scorer: Optional[Scorer] = None) -> dict:
    """Every member of ``sweep_members`` trained and evaluated as one program; scores per
    member and, per variant (and sigma), their mean and sample std (ddof = 1) over seeds
    (``scorer``: as ``run_caption``'s)."""
    sweep = caption_sweep.Sweep(config, sweep_members(config), wd, scorer)
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
            "by_variant": table, "seeds": config.sweep.seeds}


def _plot_loss(wd: Workdir) -> None:
    rows = [r for r in wd.read_metrics() if "loss" in r]
    if rows:
        plots.curves({"train loss": ([r["step"] for r in rows], [r["loss"] for r in rows])},
                     "step", "caption loss", wd.file("loss.png"))


def _plot_gap_sensitivity(rows: dict, wd: Workdir) -> None:
    norms = [float(k) for k in rows]
    plots.curves({m: (norms, [rows[k][m] for k in rows]) for m in ("ROUGE-1", "ROUGE-L", "METEOR")},
                 "gap distance |c|", "score", wd.file("gap_sensitivity.png"))
