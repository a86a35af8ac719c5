"""Config-driven geometry runs: synthetic contrastive run, MLP collapse, real embeddings."""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from c3_jax.progress import progress_bar

from c3_jax import c3, geometry, plots
from c3_jax.experiments import checks
from c3_jax.experiments.schema import field_types
from c3_jax.timing import matmul_peak_flops
from c3_jax.workdir import Workdir


def default_config(experiment: str) -> ml_collections.ConfigDict:
    """Every field of a geometry experiment ('geometry_synthetic', 'geometry_mlp_collapse' or
    'geometry_embeddings') with its default."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    if experiment == "geometry_synthetic":
        c.seed = 0
        c.num_pairs = 500      # 500 image + 500 text embeddings, as the reference code does
        c.dim = 512
        c.d_x = 25             # effective dims of CLIP image embeddings at init (Figure 3)
        c.d_y = 230            # effective dims of CLIP text embeddings at init
        c.tau = 0.07           # CLIP's initial temperature, fixed (logit scale log(1/0.07))
        c.lr = 0.1
        c.steps = 200_000
        c.chunk = 1_000        # steps per jitted lax.scan call
        c.gamma = 0.99
        c.stable_delta = 0.01  # Lemma 2: loss level regarded as converged
        # 'normalize_once': Lemma 1's loss on the embeddings, unit-normalized once before
        # optimization (Section 3.1). 'normalize_in_loss': normalize inside the loss, like a
        # CLIP head, from unit rows. 'notebook': normalize inside the loss, from raw rows.
        c.protocol = "normalize_once"
    elif experiment == "geometry_mlp_collapse":
        c.seed = 0
        c.num_inputs = 10_000   # as the reference notebook (Figure 13)
        c.width = 512
        c.depth = 50
        c.every = 5
    elif experiment == "geometry_embeddings":
        c.embeddings = ""
        c.x_key = "x"          # e.g. image / audio / video embeddings
        c.y_key = "y"          # e.g. caption embeddings
        c.seed = 0
        c.group_size = 100     # pairs per group (Appendix C)
        c.gamma = 0.99
        c.calibration_pairs = 100
    else:
        raise ValueError(f"unknown geometry experiment {experiment!r}; known: "
                         "'geometry_synthetic', 'geometry_mlp_collapse', 'geometry_embeddings'")
    return c


FIELDS = {name: field_types(default_config(name)) for name in (
    "geometry_synthetic", "geometry_mlp_collapse", "geometry_embeddings")}


# Section 3.1 protocols: name -> (rows unit-normalized before optimizing, normalize in the loss).
SYNTHETIC_PROTOCOLS = {
    "normalize_once": (True, False),     # Section 3.1: Lemma 1's loss on unit rows
    "normalize_in_loss": (True, True),   # CLIP-head loss, from unit rows
    "notebook": (False, True),           # the reference notebook: CLIP-head loss, raw rows
}


def check(config) -> None:
    """Every value of a geometry config, checked before any work."""
    if config.experiment == "geometry_synthetic":
        synthetic_protocol(config.protocol)
        checks.at_least(config, 1, ["steps", "chunk", "d_x", "d_y"])
        checks.at_least(config, 2, ["num_pairs"])
        checks.at_least(config, config.d_x + config.d_y, ["dim"])
        checks.positive(config, ["tau", "lr", "stable_delta"])
        checks.within(config, 0.0, 1.0, ["gamma"])
        checks.divides(config, "chunk", "steps")
    elif config.experiment == "geometry_mlp_collapse":
        checks.at_least(config, 2, ["num_inputs"])
        checks.at_least(config, 1, ["width", "depth", "every"])
    else:
        for path in config.embeddings.split(","):
            checks.existing(path.strip(), "embeddings")
        checks.at_least(config, 2, ["group_size", "calibration_pairs"])
        checks.within(config, 0.0, 1.0, ["gamma"])


def synthetic_protocol(protocol: str) -> tuple:
    """(normalize_init, normalize_in_loss) of a synthetic-run protocol; an unknown one fails."""
    if protocol not in SYNTHETIC_PROTOCOLS:
        raise ValueError(f"config field 'protocol' must be one of {sorted(SYNTHETIC_PROTOCOLS)}, "
                         f"got {protocol!r}")
    return SYNTHETIC_PROTOCOLS[protocol]


def synthetic_init(config) -> tuple:
    """The protocol's starting rows (x, y): unit-normalized, or raw for 'notebook'."""
    normalize_init, _ = synthetic_protocol(config.protocol)
    return geometry.synthetic_embeddings(jax.random.PRNGKey(config.seed), config.num_pairs,
                                         config.dim, config.d_x, config.d_y, normalize_init)


def _variances(x, y) -> dict:
    x, y = c3.normalize(jnp.asarray(x)), c3.normalize(jnp.asarray(y))
    return {"image": np.asarray(x.var(0)), "text": np.asarray(y.var(0))}


def _train_synthetic(config, params, wd: Workdir, ineffective: slice):
    """Runs config.steps SGD steps in scanned chunks; logs gap and loss per chunk.

    Returns the final rows, every step's loss, the per-chunk gap reports and the seconds.
    """
    _, normalize_in_loss = synthetic_protocol(config.protocol)
    losses, gaps = [], []
    start = time.perf_counter()
    with progress_bar(total=config.steps, desc="contrastive SGD", unit="step") as bar:
        for i in range(config.steps // config.chunk):
            params, chunk_losses = geometry.contrastive_sgd_chunk(
                params, config.chunk, config.tau, config.lr, normalize_in_loss)
            chunk_losses = np.asarray(chunk_losses)
            losses.append(chunk_losses)
            gaps.append(geometry.gap_report(*params, ineffective))
            wd.log_metrics((i + 1) * config.chunk, {"loss": float(chunk_losses[-1]), **gaps[-1]})
            bar.update(config.chunk)
            bar.set_postfix(loss=f"{chunk_losses[-1]:.4f}")
    return params, np.concatenate(losses), gaps, time.perf_counter() - start


def _mean_row_norm(e) -> float:
    return float(jnp.linalg.norm(jnp.asarray(e), axis=1).mean())


def run_synthetic(config, wd: Workdir) -> dict:
    """Section 3.1 / Figure 4: the gap survives contrastive optimization."""
    synthetic_protocol(config.protocol)  # fails early on an unknown protocol
    if config.steps % config.chunk:
        raise ValueError(f"config.steps={config.steps} must be a multiple of "
                         f"config.chunk={config.chunk}")
    x, y = synthetic_init(config)
    ineffective = slice(config.d_x + config.d_y, config.dim)
    # Gaps, variances and spectra are measured on unit rows, whatever the protocol.
    xn, yn = c3.normalize(x), c3.normalize(y)
    before, init_gap = _variances(x, y), geometry.gap_report(x, y, ineffective)
    # At its starting rows every protocol's loss is Lemma 1's loss on the unit rows.
    loss_init = float(geometry.contrastive_loss(xn, yn, config.tau))
    row_norm_init = _mean_row_norm(x)
    spectra = {"image": geometry.covariance_spectrum(xn), "text": geometry.covariance_spectrum(yn)}
    eff = {k: geometry.effective_dimension_of_spectrum(s, config.gamma) for k, s in spectra.items()}
    params, losses, gaps, train_s = _train_synthetic(config, (x, y), wd, ineffective)
    after, final_gap = _variances(*params), geometry.gap_report(*params, ineffective)
    flops = 3 * 2 * config.num_pairs ** 2 * config.dim * config.steps
    peak = matmul_peak_flops()
    results = {
        "protocol": config.protocol,
        "effective_dim_x": eff["image"], "effective_dim_y": eff["text"],
        "gap_init": init_gap["gap"], "gap_init_ineffective": init_gap["gap_ineffective"],
        "gap_final": final_gap["gap"], "gap_final_ineffective": final_gap["gap_ineffective"],
        "ineffective_variance_max_init": float(max(v[ineffective].max() for v in before.values())),
        "ineffective_variance_max_final": float(max(v[ineffective].max() for v in after.values())),
        "effective_variance_mean_final": float(np.mean(
            [v[:ineffective.start].mean() for v in after.values()])),
        "loss_init": loss_init, "loss_final": float(losses[-1]),
        "mean_row_norm_init": row_norm_init, "mean_row_norm_final": _mean_row_norm(params[0]),
        "steps": config.steps, "train_seconds": train_s,
        "achieved_gflops": flops / train_s / 1e9, "matmul_peak_gflops": peak / 1e9,
        "fraction_of_matmul_peak": flops / train_s / peak,
        "stable_region": _stable_region(config, wd),
    }
    plots.per_dimension_variance(before, after, wd.file("variance_before_after.png"))
    plots.spectra({k: np.asarray(s) for k, s in spectra.items()}, eff, wd.file("spectra.png"),
                  "synthetic embeddings at initialization")
    keep = np.unique(np.geomspace(1, len(losses), 400).astype(int)) - 1
    plots.curves({"symmetric InfoNCE": (keep + 1, losses[keep])}, "step", "loss",
                 wd.file("loss.png"), logy=True)
    _plot_gaps(config, init_gap, gaps, wd.file("gap.png"))
    return results


def _plot_gaps(config, init_gap: dict, gaps: list, path: str) -> str:
    """Figure 4's gap against step, over all dims and over the ineffective dims."""
    steps = np.arange(len(gaps) + 1) * config.chunk
    series = {name: (steps, [init_gap[key]] + [g[key] for g in gaps])
              for name, key in (("all dims", "gap"), ("ineffective dims", "gap_ineffective"))}
    return plots.curves(series, "step", "modality gap |mean(x) - mean(y)|", path)


def _stable_region(config, wd: Workdir) -> dict:
    """Lemma 2 / Figure 5: margin needed for loss <= delta against temperature."""
    taus = np.linspace(0.01, 1.0, 100)
    counts = sorted({1, 10, config.num_pairs - 1})
    margins = {f"o={o}": geometry.required_margin(taus, config.stable_delta, o) for o in counts}
    plots.stable_region(taus, margins, wd.file("stable_region.png"))
    at = {f"o={o}": float(geometry.required_margin(config.tau, config.stable_delta, o))
          for o in counts}
    return {"delta": config.stable_delta, "tau": config.tau, "margin_at_tau": at}


def run_mlp_collapse(config, wd: Workdir) -> dict:
    """Appendix I.2 / Figure 13: deeper ReLU MLPs collapse to fewer effective dims."""
    out = geometry.mlp_collapse(jax.random.PRNGKey(config.seed), config.num_inputs,
                                config.width, config.depth, config.every)
    labels = [f"layer {l}" for l in out["layers"]]
    plots.spectra(dict(zip(labels, out["spectra"])), dict(zip(labels, out["effective_dim"])),
                  wd.file("spectra.png"), "MLP features at initialization")
    for layer, de in zip(out["layers"], out["effective_dim"]):
        wd.log_metrics(layer, {"effective_dim": de})
    return {k: v for k, v in out.items() if k != "spectra"}


def load_pairs(config):
    """Loads paired embeddings from an .npz (keys x_key, y_key) or 'x.npy,y.npy'."""
    path = config.embeddings
    if not path:
        raise ValueError("set --config.embeddings=FILE.npz (arrays under config.x_key and "
                         "config.y_key) or --config.embeddings=X.npy,Y.npy")
    if "," in path:
        files = path.split(",")
        for f in files:
            if not os.path.exists(f):
                raise FileNotFoundError(f"embeddings file {f} does not exist")
        x, y = (np.load(f, mmap_mode="r") for f in files)
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"embeddings file {path} does not exist")
        with np.load(path) as data:
            for key in (config.x_key, config.y_key):
                if key not in data:
                    raise KeyError(f"{path} holds {sorted(data.keys())}; no array {key!r} "
                                   "(set config.x_key / config.y_key)")
            x, y = data[config.x_key], data[config.y_key]
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"paired embeddings must both be [n, d]; got {x.shape} and {y.shape}")
    return x, y


def _normalize_rows_inplace(e: np.ndarray, name: str) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", e, e))
    if not np.isfinite(norms).all():
        raise ValueError(f"{name} embeddings contain NaN or Inf")
    if (norms == 0).any():
        raise ValueError(f"{name} embeddings contain all-zero rows, which cannot be normalized")
    e /= norms[:, None]
    return e


def pair_geometry(x: np.ndarray, y: np.ndarray, wd: Workdir, *, seed: int, group_size: int,
                  calibration_pairs: int, gamma: float, title: str = "",
                  names: tuple = ("x", "y")) -> dict:
    """Appendix C on paired embeddings (float32, owned, normalized here in place):
    effective dims, Table 1 statistics (orthogonality as the official notebook computes it,
    over consecutive rows of ``x`` in their given order, beside random directions), the
    gap, calibrated sigma, the gap's structure
    (``gap_structure``, and the overlap of the modalities' principal subspaces), and
    their figures."""
    start = time.perf_counter()
    x, y = _normalize_rows_inplace(x, names[0]), _normalize_rows_inplace(y, names[1])
    rng_stats, rng_cal = jax.random.split(jax.random.PRNGKey(seed))
    stats = geometry.gap_statistics(x, y, rng_stats, group_size, normalize_inputs=False,
                                    progress=True)
    stats_s = time.perf_counter() - start
    n_cal = min(calibration_pairs, x.shape[0])
    cal_idx = np.asarray(jax.random.choice(rng_cal, x.shape[0], (n_cal,), replace=False))
    calibrated = c3.calibrate_sigma(x[cal_idx], y[cal_idx])
    gap = float(np.linalg.norm(x.mean(0, dtype=np.float64) - y.mean(0, dtype=np.float64)))
    structure = gap_structure(x, y, jax.random.fold_in(rng_cal, 1))
    eigh = {"image": geometry.covariance_eigh(x), "text": geometry.covariance_eigh(y)}
    spectra = {k: values for k, (values, _) in eigh.items()}
    eff = {k: geometry.effective_dimension_of_spectrum(s, gamma) for k, s in spectra.items()}
    structure["subspace_overlap"] = geometry.subspace_overlap(
        eigh["image"][1], eigh["text"][1], sorted({1, 2, 5, 10, 20, 50, max(eff.values())}
                                                  & set(range(1, x.shape[1] + 1))))
    compute_s = time.perf_counter() - start
    plots.gap_histograms(stats, wd.file("gap_statistics.png"))
    plots.spectra(spectra, eff, wd.file("spectra.png"), title)
    plots.gap_structure(structure, wd.file("gap_structure.png"), names)
    logging.info("computed in %.1fs (Table 1 statistics %.1fs)", compute_s, stats_s)
    return {
        "num_pairs": int(x.shape[0]), "dim": int(x.shape[1]), "stats_seconds": stats_s,
        "effective_dim_x": eff["image"], "effective_dim_y": eff["text"],
        "modality_gap": gap,
        "statistics": {k: stats[k] for k in geometry.STAT_NAMES
                       + ("gap_orthogonality_within_group",)},
        "num_groups": stats["num_groups"], "group_size": group_size,
        "sigma_calibrated": calibrated["sigma"], "sigma_calibration_pairs": n_cal,
        "sigma_fixed_clip": c3.CLIP_SIGMA, "compute_seconds": compute_s,
        "structure": {k: v for k, v in structure.items() if k != "residual_spectrum"},
    }


def gap_structure(x: np.ndarray, y: np.ndarray, rng) -> dict:
    """The residual's anisotropy and the mean gap's share (``geometry.residual_structure``)
    and the gap's transfer across clusters of pairs (``geometry.gap_transfer``)."""
    return {**geometry.residual_structure(x, y),
            "transfer": geometry.gap_transfer(x, y, rng)}


def run_embeddings(config, wd: Workdir) -> dict:
    """Appendix C on user embeddings: effective dims, Table 1 statistics, calibrated sigma."""
    start = time.perf_counter()
    # Writable float32 arrays we own (normalized in place); copies only memory maps.
    x, y = (np.require(a, np.float32, ["C", "W", "O"]) for a in load_pairs(config))
    load_s = time.perf_counter() - start
    report = pair_geometry(x, y, wd, seed=config.seed, group_size=config.group_size,
                           calibration_pairs=config.calibration_pairs, gamma=config.gamma,
                           title=os.path.basename(config.embeddings),
                           names=(config.x_key, config.y_key))
    logging.info("loaded in %.1fs", load_s)
    return {**report, "load_seconds": load_s}
