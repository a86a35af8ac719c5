"""Figures (Figures 4, 5, 8, 13 of the paper; curves; captioned samples), saved as PNG."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
    import jax
    fig.tight_layout()
    if jax.process_index() == 0:  # one writer when several processes share the workdir
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _styles(count: int) -> list:
    """Colours for ``count`` lines: the default cycle up to 10, a colormap beyond."""
    if count <= 10:
        return [f"C{i}" for i in range(count)]
    return [plt.get_cmap("viridis")(i / (count - 1)) for i in range(count)]


def _line(ax, x, y, color, label, **kw):
    """A line; with markers where the curve has few points (they would read as a trend)."""
    marker = "o" if len(np.atleast_1d(x)) <= 12 else None
    return ax.plot(x, y, color=color, marker=marker, ms=4, label=label, **kw)[0]


def per_dimension_variance(before: dict, after: dict, path: str) -> str:
    """Figure 4: per-dimension variance of both modalities, before and after training."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, (title, var) in zip(axes, (("before optimization", before), ("after optimization", after))):
        for label, v in var.items():
            ax.bar(np.arange(len(v)), v, width=1.0, alpha=0.6, label=label)
        ax.set_title(f"per-dimension variance, {title}")
        ax.set_xlabel("dimension")
        ax.legend()
    axes[0].set_ylabel("variance")
    return _save(fig, path)


def curves(series: dict, xlabel: str, ylabel: str, path: str, logy: bool = False) -> str:
    """Line plot of named (x, y) series."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for color, (label, (x, y)) in zip(_styles(len(series)), series.items()):
        _line(ax, x, y, color, label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def spectra(spectra_by_label: dict, effective_dims: dict, path: str, title: str = "") -> str:
    """Figures 3/12/13: normalized singular values with each effective dimension marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, s in spectra_by_label.items():
        s = np.asarray(s, np.float64)
        s = s / s.sum()
        line, = ax.plot(np.arange(1, len(s) + 1), s, label=label)
        de = effective_dims[label]
        ax.plot([de], [s[de - 1]], "o", color="black", ms=4)
        line.set_label(f"{label} (d_e={de})")
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("singular value / sum")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def gap_histograms(stats: dict, path: str) -> str:
    """Figure 8: distributions of the five gap / noise statistics."""
    titles = {"gap_length": "Gap length |d_i|", "gap_direction": "Gap direction cos(d_i, d_j)",
              "gap_orthogonality": "Gap orthogonality cos(x_i+1 - x_i, mean gap)",
              "noise_mean": "Noise mean E[eps] per dim",
              "noise_direction": "Noise direction cos(eps_j, eps_k)"}
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.2))
    for ax, (key, title) in zip(axes, titles.items()):
        s = stats[key]
        edges, hist = np.asarray(s["edges"]), np.asarray(s["hist"], np.float64)
        keep = np.nonzero(hist)[0]
        lo, hi = (keep[0], keep[-1] + 1) if len(keep) else (0, len(hist))
        ax.stairs(hist[lo:hi], edges[lo:hi + 1], fill=True, alpha=0.7)
        chance = ""
        if "random" in s:  # the same statistic for random directions, scaled to one
            r = np.asarray(s["random"]["hist"], np.float64) / s["random"]["directions"]
            keep = np.nonzero(hist + r)[0]
            lo, hi = keep[0], keep[-1] + 1
            ax.stairs(r[lo:hi], edges[lo:hi + 1], color="C3", label="random directions")
            ax.legend(fontsize=7)
            chance = f" (random {s['random']['std']:.2g})"
        ax.set_title(f"{title}\nmean {s['mean']:.3g}, std {s['std']:.2g}{chance}", fontsize=9)
    return _save(fig, path)


def gap_structure(structure: dict, path: str, names=("x", "y")) -> str:
    """The gap's structure: the residual covariance's spectrum against an isotropic one,
    the mean gap's share of the gap energy, the principal-subspace overlap by k, and the
    share of held-out clusters' gap energy removed by a gap estimated on the others."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    s = np.asarray(structure["residual_spectrum"], np.float64)
    axes[0].plot(np.arange(1, len(s) + 1), s / s.mean(), label="residual")
    axes[0].axhline(1.0, color="grey", ls="--", label="isotropic")
    axes[0].set(yscale="log", xlabel="eigenvalue index", ylabel="eigenvalue / mean",
                title=f"residual: top ratio {structure['top_eigenvalue_ratio']:.1f}, "
                      f"d_eff {structure['residual_effective_dim']:.0f}")
    axes[0].legend(fontsize=7)
    share = structure["mean_gap_energy_share"]
    axes[1].bar(["mean gap", "residual"], [share, 1 - share], color=["C0", "C1"])
    axes[1].set(ylim=(0, 1), ylabel="share of E|x - y|^2", title="pairwise gap energy")
    ks = sorted(structure["subspace_overlap"])
    _line(axes[2], ks, [structure["subspace_overlap"][k] for k in ks], "C2", "overlap")
    axes[2].set(xscale="log", ylim=(0, 1.05), xlabel="k",
                ylabel="|U_k^T V_k|^2 / k", title=f"top-k subspaces of {names[0]}, {names[1]}")
    t = structure["transfer"]
    keys = ("explained_by_estimate", "explained_by_own_mean")
    axes[3].bar(["estimated on\nother clusters", "own mean\n(oracle)"],
                [t[k]["mean"] for k in keys], yerr=[t[k]["std"] for k in keys],
                color=["C3", "C0"], capsize=4)
    axes[3].set(ylabel="share of held-out gap energy removed",
                title=f"transfer over {t['clusters']} clusters: ratio "
                      f"{t['transfer_ratio']['mean']:.2f}")
    return _save(fig, path)


def stable_region(taus, margins: dict, path: str, r_max: float = 2.0) -> str:
    """Figure 5: required margin vs temperature; the region above it is stable."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    top = None
    for color, (label, r) in zip(_styles(len(margins)), margins.items()):
        _line(ax, taus, r, color, label)
        top = r if top is None else np.maximum(top, r)
    ax.fill_between(taus, np.minimum(top, r_max), r_max, color="green", alpha=0.2,
                    label="stable region (all curves)")
    ax.set_ylim(0, r_max)
    ax.set_xlabel("temperature tau")
    ax.set_ylabel("margin r for loss <= delta")
    ax.legend(fontsize=7)
    return _save(fig, path)


def captioned_images(images, captions: dict, path: str) -> str:
    """A row of images, each with one caption per named source underneath."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6 + 0.55 * len(captions)))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        text = "\n".join(f"{name}: {textwrap.fill(caps[i], 34)}" for name, caps in captions.items())
        ax.set_xlabel(text, fontsize=6.5, loc="left")
    return _save(fig, path)


def image_grid(rows: dict, column_titles, path: str) -> str:
    """Named rows of images under one title per column (e.g. the caption they came from)."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.45 * n_cols, 1.25 * n_rows + 1.0),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(textwrap.fill(column_titles[c], 22), fontsize=5.5)
    return _save(fig, path)


def metric_panels(panels: dict, xlabel: str, path: str, xticklabels=None,
                  logx: bool = False) -> str:
    """One panel per metric, each with named (x, y) series; ``xticklabels`` names the x
    positions of a categorical axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (metric, series) in zip(np.atleast_1d(axes), panels.items()):
        for color, (label, (x, y)) in zip(_styles(len(series)), series.items()):
            _line(ax, x, y, color, label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if logx:
            ax.set_xscale("symlog", linthresh=10)
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)), xticklabels)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(fig, path)


def sweep_panels(x, panels: dict, marks: dict, xlabel: str, path: str) -> str:
    """One panel per metric: mean ± std over seeds at each ``x`` (error bars), and the
    vertical lines of ``marks`` ({label: x}, e.g. a calibrated value)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (metric, (mean, std)) in zip(np.atleast_1d(axes), panels.items()):
        ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=3, color="C0",
                    label="mean ± std over seeds")
        for color, (label, value) in zip(_styles(len(marks) + 1)[1:], marks.items()):
            ax.axvline(value, color=color, ls="--", lw=1, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(fig, path)
