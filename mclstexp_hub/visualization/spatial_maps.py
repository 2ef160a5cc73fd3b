"""PNG maps of a prediction AnnData drawn over its H&E thumbnail.

Spots are drawn as circles of the true spot diameter in image coordinates (read from
`uns["spatial"][library]["scalefactors"]`, the same fields scanpy uses), so the map lines up
with the tissue. With observed expression (`layers["observed"]`), each gene gets a predicted |
observed pair on one shared colour scale, with the per-gene Pearson r in the title.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mclstexp_hub.prediction.io import save_figure_atomic

OBSERVED_LAYER = "observed"
UNCERTAINTY_LAYER = "neighbour_spread"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def spatial_frame(adata, library_id: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(thumbnail image, spot centres in thumbnail pixels, spot diameter in thumbnail pixels)."""
    spatial = adata.uns.get("spatial")
    if not spatial:
        raise ValueError("AnnData has no uns['spatial']; write it with `mclstexp predict`.")
    library_id = library_id or next(iter(spatial))
    if library_id not in spatial:
        raise KeyError(f"library {library_id!r} not in uns['spatial'] ({list(spatial)}).")
    entry = spatial[library_id]
    image = np.asarray(entry["images"]["hires"])
    scale = float(entry["scalefactors"]["tissue_hires_scalef"])
    diameter = float(entry["scalefactors"]["spot_diameter_fullres"]) * scale
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] * scale
    return image, xy, diameter


def _draw(ax, image, xy, diameter, values, cmap, vmin, vmax, title, categorical=None):
    from matplotlib.collections import EllipseCollection

    ax.imshow(image, interpolation="bilinear")
    finite = np.isfinite(values) if categorical is None else np.ones(len(values), dtype=bool)
    collection = EllipseCollection(
        widths=diameter, heights=diameter, angles=0, units="xy",
        offsets=xy[finite], offset_transform=ax.transData, cmap=cmap, linewidths=0, alpha=0.9,
    )
    collection.set_array(np.asarray(values)[finite])
    collection.set_clim(vmin, vmax)
    ax.add_collection(collection)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return collection


def _gene_column(adata, gene: str, layer: str | None = None) -> np.ndarray:
    if gene not in adata.var_names:
        import difflib

        close = difflib.get_close_matches(gene, list(adata.var_names), n=5)
        raise KeyError(
            f"gene {gene!r} is not in the prediction's genes ({adata.n_vars} genes"
            + (f"; did you mean {close}?" if close else "")
            + "). Plot genes of the model's panel (config.gene_names)."
        )
    j = int(adata.var_names.get_loc(gene))
    matrix = adata.layers[layer] if layer else adata.X
    column = matrix[:, j]
    column = column.toarray() if hasattr(column, "toarray") else column
    return np.asarray(column, dtype=np.float64).ravel()


def plot_gene_map(adata, gene: str, path: str | Path, units: str | None = None) -> Path:
    """One PNG: the predicted expression of `gene` over the H&E thumbnail; with
    `layers["observed"]`, predicted and observed side by side with Pearson r in the title;
    with `layers["neighbour_spread"]` (the retrieved neighbours' weighted spread of this gene), a
    panel of it next to the prediction, on its own colour scale."""
    plt = _pyplot()
    image, xy, diameter = spatial_frame(adata)
    predicted = _gene_column(adata, gene)
    units = units or str(adata.uns.get("mclstexp", {}).get("units", ""))
    spread = (_gene_column(adata, gene, UNCERTAINTY_LAYER)
              if UNCERTAINTY_LAYER in adata.layers else None)
    has_observed = OBSERVED_LAYER in adata.layers
    n_panels = 1 + int(has_observed) + int(spread is not None)
    if n_panels == 1:
        fig, ax = plt.subplots(figsize=(6, 5.6), layout="constrained")
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 5.0), layout="constrained")
        axes = list(axes)
    if has_observed:
        observed = _gene_column(adata, gene, OBSERVED_LAYER)
        both = np.concatenate([predicted, observed[np.isfinite(observed)]])
        vmin, vmax = float(np.min(both)), float(np.max(both))
        r = gene_pearson(predicted, observed)
        _draw(axes[0], image, xy, diameter, predicted, "viridis", vmin, vmax, "predicted")
        mappable = _draw(axes[1], image, xy, diameter, observed, "viridis", vmin, vmax, "observed")
        fig.suptitle(f"{gene} — Pearson r = {r:.3f} (n = {int(np.isfinite(observed).sum())} spots)")
        fig.colorbar(mappable, ax=axes[:2], shrink=0.7, label=units)
    else:
        vmin, vmax = float(predicted.min()), float(predicted.max())
        mappable = _draw(axes[0], image, xy, diameter, predicted, "viridis", vmin, vmax,
                         f"{gene} — predicted")
        fig.colorbar(mappable, ax=axes[0], shrink=0.7, label=units)
    if spread is not None:
        high = float(np.nanmax(spread)) if spread.size else 0.0
        mappable = _draw(axes[-1], image, xy, diameter, spread, "magma", 0.0, high or 1.0,
                         "neighbour spread (weighted std)")
        fig.colorbar(mappable, ax=axes[-1], shrink=0.7, label=units)
    try:
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def gene_pearson(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Pearson r over the spots where both are finite (NaN when either is constant)."""
    keep = np.isfinite(predicted) & np.isfinite(observed)
    x, y = predicted[keep], observed[keep]
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def save_gene_maps(adata, genes: Sequence[str], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """One PNG per gene in `out_dir` (`{prefix}{gene}.png`); unknown genes fail before drawing."""
    for gene in genes:
        _gene_column(adata, gene)
    out_dir = Path(out_dir)
    safe = {g: "".join(c if c.isalnum() or c in "-_." else "_" for c in g) for g in genes}
    return [plot_gene_map(adata, g, out_dir / f"{prefix}{safe[g]}.png") for g in genes]


def plot_cluster_map(adata, key: str, path: str | Path, title: str | None = None) -> Path:
    """Spatial domains (`obs[key]`, categorical) over the H&E thumbnail, one colour each."""
    plt = _pyplot()
    image, xy, diameter = spatial_frame(adata)
    labels = adata.obs[key].astype(str).to_numpy()
    categories = sorted(set(labels), key=lambda s: (len(s), s))
    codes = np.array([categories.index(v) for v in labels], dtype=np.float64)
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20", max(len(categories), 1))
    fig, ax = plt.subplots(figsize=(6.5, 5.6), layout="constrained")
    _draw(ax, image, xy, diameter, codes, cmap, -0.5, len(categories) - 0.5,
          title or f"spatial domains ({key})", categorical=True)
    from matplotlib.patches import Patch

    handles = [Patch(color=cmap(i), label=c) for i, c in enumerate(categories)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
              frameon=False)
    try:
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


__all__ = ["gene_pearson", "plot_cluster_map", "plot_gene_map", "save_gene_maps", "spatial_frame"]
