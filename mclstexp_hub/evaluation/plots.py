"""PNG figures of an evaluation: the per-gene r distribution and maps of the best genes.

Matplotlib runs on the non-interactive Agg backend (no display on servers/CI); every figure
is written to a temporary file and renamed, so a crash never leaves a truncated PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        _pyplot().close(fig)
    return path


def plot_r_distribution(
    per_gene_r: Mapping[str, Sequence[float]] | Sequence[float],
    path: str | os.PathLike,
    title: str = "Per-gene Pearson r",
) -> Path:
    """Histogram of per-gene r (one series, or one per method/section), means marked.

    NaN genes (constant prediction or truth) are left out and their number is in the legend.
    """
    plt = _pyplot()
    series = per_gene_r if isinstance(per_gene_r, Mapping) else {"r": per_gene_r}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(-1.0, 1.0, 41)
    for name, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        n_nan = int(values.size - finite.size)
        mean = float(finite.mean()) if finite.size else float("nan")
        label = f"{name}: mean {mean:.3f}" + (f", {n_nan} NaN dropped" if n_nan else "")
        line = ax.hist(finite, bins=bins, histtype="step", linewidth=1.5, label=label)[2][0]
        if finite.size:
            ax.axvline(mean, color=line.get_edgecolor(), linestyle="--", linewidth=1)
    ax.axvline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("Pearson r (predicted vs observed, per gene)")
    ax.set_ylabel("genes")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gene_maps(
    positions: np.ndarray,
    observed: np.ndarray,
    predicted: np.ndarray,
    gene_names: Sequence[str],
    genes: Sequence[str],
    path: str | os.PathLike,
    per_gene_r: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """Observed (top row) and predicted (bottom row) expression of `genes` on the spot grid.

    `positions` are (n_spots, 2) array (x, y) or pixel coordinates; y grows downwards as on the
    slide. Each panel has its own colour scale (with a colour bar): retrieval averages many
    spots, so predictions vary over a narrower range than observations, and a shared scale
    would hide the spatial pattern that Pearson r measures.
    """
    plt = _pyplot()
    positions = np.asarray(positions, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if positions.ndim != 2 or positions.shape != (observed.shape[0], 2):
        raise ValueError(
            f"positions must be ({observed.shape[0]}, 2); got {tuple(positions.shape)}."
        )
    index = {g: j for j, g in enumerate(gene_names)}
    missing = [g for g in genes if g not in index]
    if missing:
        raise ValueError(f"plot_gene_maps: genes {missing[:5]} are not in gene_names.")
    if not genes:
        raise ValueError("plot_gene_maps: no genes to plot.")
    n = len(genes)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    for col, gene in enumerate(genes):
        j = index[gene]
        for row, (values, kind) in enumerate(((observed, "observed"), (predicted, "predicted"))):
            ax = axes[row][col]
            lo, hi = float(values[:, j].min()), float(values[:, j].max())
            dots = ax.scatter(positions[:, 0], positions[:, 1], c=values[:, j], s=10,
                              cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                              marker="o", linewidths=0)
            fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{gene} {kind}"
            if row == 1 and per_gene_r is not None:
                label += f"\nr = {float(per_gene_r[j]):.3f}"
            ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


__all__ = ["plot_gene_maps", "plot_r_distribution"]
