"""The demo app's work, without Gradio: predict a slide, find domains, draw maps, explain errors.

Everything the page shows comes from the package's own pieces: `load_pipeline` /
`predict_to_h5ad` (the `spatial-gene-expression` pipeline), `run_domains` (PCA → k-means, as
`mclstexp domains`), `plot_gene_map` / `plot_cluster_map`. Each run writes into its own
folder: `<image stem>_pred.h5ad` (with the domains in `obs["mclstexp_domain"]`) and PNGs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import DEVICE_ENV, MODEL_ENV

logger = logging.getLogger(__name__)

SPOTS_CSV = "spots CSV"  # the two ways to place spots, as the page names them
SPOTS_TILE = "tile the tissue"
SPOT_MODES = (SPOTS_CSV, SPOTS_TILE)
DEFAULT_N_CLUSTERS = 5
DOMAIN_KEY = "mclstexp_domain"
UNCERTAINTY = "neighbour_spread"  # layers[...] (spot × gene) and/or obs[...] (per spot)
IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".svs", ".ndpi", ".scn", ".mrxs",
               ".bif", ".vms")
SPOTS_TYPES = (".csv", ".tsv", ".txt")

# What a user can fix (bad file, wrong model name, bad option): shown as the message itself.
_USER_ERRORS = (ValueError, OSError, KeyError, ImportError)
_pipelines: dict[tuple[str, str | None], Any] = {}
_pipeline_lock = threading.Lock()
_plot_lock = threading.Lock()  # pyplot is not thread-safe; handlers run in worker threads


def default_model() -> str:
    """The checkpoint preselected in the app: `$MCLSTEXP_APP_MODEL`, else empty."""
    return os.environ.get(MODEL_ENV, "").strip()


def default_device() -> str | None:
    return os.environ.get(DEVICE_ENV, "").strip() or None


def get_pipeline(model: str, device: str | None = None):
    """The pipeline of `model` (checkpoint folder or Hub id), loaded once per (model, device)."""
    from mclstexp_hub.prediction.predict import load_pipeline

    key = (model, device)
    with _pipeline_lock:
        if key not in _pipelines:
            _pipelines[key] = load_pipeline(model, device=device)
        return _pipelines[key]


@dataclass
class AppRun:
    """One prediction as the page shows it."""

    adata: Any
    h5ad: Path
    folder: Path
    genes: list[str]
    default_gene: str
    domains_png: Path | None
    summary: str
    has_neighbour_spread: bool
    maps: dict[str, Path] = field(default_factory=dict)  # gene → drawn PNG (cache)


def _path(upload: Any) -> Path | None:
    """A filesystem path from what Gradio hands over (str path, or an object with `.name`)."""
    if upload is None or upload == "":
        return None
    if isinstance(upload, (list, tuple)):
        upload = upload[0] if upload else None
        if upload is None:
            return None
    if isinstance(upload, (str, os.PathLike)):
        return Path(os.fspath(upload))
    name = getattr(upload, "path", None) or getattr(upload, "name", None)  # a file object
    return Path(os.fspath(name)) if name else None


def run_prediction(
    model: str,
    image: Any,
    spots_mode: str = SPOTS_CSV,
    spots_csv: Any = None,
    n_clusters: int = DEFAULT_N_CLUSTERS,
    *,
    device: str | None = None,
    work_dir: str | Path | None = None,
    tile_pitch: float | None = None,
    min_tissue_fraction: float = 0.5,
) -> AppRun:
    """Predict every spot of `image`, add spatial domains, write the .h5ad; errors are raised
    (turn them into a message with `user_message`)."""
    model = (model or "").strip()
    if not model:
        raise ValueError(f"choose a checkpoint: a local checkpoint folder or a Hub model id "
                         f"'org/name' (the app's default comes from ${MODEL_ENV}).")
    image_path = _path(image)
    if image_path is None:
        raise ValueError("upload an H&E image (JPEG, PNG, TIFF or a whole-slide format such as "
                         "SVS) first.")
    if spots_mode not in SPOT_MODES:
        raise ValueError(f"spots: choose one of {list(SPOT_MODES)}; got {spots_mode!r}.")
    csv_path = _path(spots_csv) if spots_mode == SPOTS_CSV else None
    if spots_mode == SPOTS_CSV and csv_path is None:
        raise ValueError("upload a spots CSV (columns pixel_x, pixel_y in full-resolution pixels, "
                         f"optionally spot_id), or choose '{SPOTS_TILE}'.")
    n_clusters = int(n_clusters)
    if n_clusters < 2:
        raise ValueError(f"the number of domains must be >= 2; got {n_clusters}.")
    root = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "mclstexp-app"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    try:
        return _predict_into(folder, model, image_path, spots_mode, csv_path, n_clusters,
                             device=device, tile_pitch=tile_pitch,
                             min_tissue_fraction=min_tissue_fraction)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a failed run leaves nothing behind
        raise


def _predict_into(folder: Path, model: str, image_path: Path, spots_mode: str,
                  csv_path: Path | None, n_clusters: int, *, device: str | None,
                  tile_pitch: float | None, min_tissue_fraction: float) -> AppRun:
    from mclstexp_hub.analysis.domains import run_domains
    from mclstexp_hub.prediction.io import write_h5ad_atomic
    from mclstexp_hub.prediction.predict import predict_to_h5ad
    from mclstexp_hub.visualization.spatial_maps import plot_cluster_map

    out = folder / f"{_safe(image_path.stem)}_pred.h5ad"
    started = time.perf_counter()
    pipe = get_pipeline(model, device)
    result = predict_to_h5ad(
        model, image_path, out, spots_csv=csv_path, tile=spots_mode == SPOTS_TILE, pipe=pipe,
        tile_pitch=tile_pitch, min_tissue_fraction=min_tissue_fraction, progress=False,
        library_id=_safe(image_path.stem),
    )
    adata = result.adata
    seconds = time.perf_counter() - started
    domains_png = None
    k = min(n_clusters, adata.n_obs)
    if k >= 2:
        domains = run_domains(adata, k, key=DOMAIN_KEY)
        sizes = ", ".join(f"D{c}: {int((domains.clusters == c).sum())}" for c in range(k))
        with _plot_lock:
            domains_png = plot_cluster_map(adata, DOMAIN_KEY, folder / "domains.png",
                                           title=f"{k} spatial domains (PCA → k-means)")
        write_h5ad_atomic(adata, out, overwrite=True)  # the download carries the domains too
    else:
        sizes = "too few spots for domains"
    genes = [str(g) for g in adata.var_names]
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    variance = np.nan_to_num(np.var(X, axis=0)) if adata.n_obs else np.zeros(len(genes))
    default_gene = genes[int(np.argmax(variance))] if genes else ""
    info = adata.uns.get("mclstexp", {})
    has_neighbour_spread = UNCERTAINTY in adata.layers or UNCERTAINTY in adata.obs
    summary = (
        f"**{adata.n_obs} spots × {adata.n_vars} genes** predicted in {seconds:.1f} s "
        f"(units: {info.get('units', '?')}; retrieval k = {info.get('retrieval_k', '?')}). "
        f"Spots: {'uploaded CSV' if csv_path else 'grid over the tissue'}. "
        f"Domains ({k}): {sizes}. "
        + ("Neighbour spread (weighted spread of the retrieved spots' expression; not a validated uncertainty): shown below." if has_neighbour_spread
           else "This model's output carries no neighbour spread.")
        + f"  \nDefault map: **{default_gene}** (the most variable predicted gene)."
    )
    return AppRun(adata=adata, h5ad=result.path, folder=folder, genes=genes,
                  default_gene=default_gene, domains_png=domains_png, summary=summary,
                  has_neighbour_spread=has_neighbour_spread)


def gene_map(run: AppRun, gene: str | None) -> Path:
    """The PNG map of `gene` (drawn once per run and gene)."""
    from mclstexp_hub.visualization.spatial_maps import plot_gene_map

    gene = gene or run.default_gene
    if gene not in run.maps:
        with _plot_lock:
            run.maps[gene] = plot_gene_map(run.adata, gene, run.folder / f"gene_{_safe(gene)}.png")
    return run.maps[gene]


def neighbour_spread_values(adata, gene: str | None = None) -> tuple[np.ndarray, str] | None:
    """Per-spot neighbour_spread to draw and its title: `obs["neighbour_spread"]`, else the gene's
    column of `layers["neighbour_spread"]` (or its mean over genes); None when there is none."""
    if UNCERTAINTY in adata.obs:
        values = np.asarray(adata.obs[UNCERTAINTY], dtype=np.float64)
        return values, "per-spot neighbour spread"
    if UNCERTAINTY in adata.layers:
        layer = adata.layers[UNCERTAINTY]
        layer = layer.toarray() if hasattr(layer, "toarray") else np.asarray(layer)
        if gene is not None and gene in adata.var_names:
            j = int(adata.var_names.get_loc(gene))
            return np.asarray(layer[:, j], dtype=np.float64), f"{gene} — neighbour spread"
        return np.asarray(layer, dtype=np.float64).mean(axis=1), "neighbour spread (mean over genes)"
    return None


def neighbour_spread_map(run: AppRun, gene: str | None = None) -> Path | None:
    """A PNG of the per-spot neighbour_spread over the slide, or None when the AnnData has none."""
    found = neighbour_spread_values(run.adata, gene)
    if found is None:
        return None
    values, title = found
    key = f"__neighbour_spread__{title}"
    if key not in run.maps:
        path = run.folder / f"neighbour_spread_{_safe(title)}.png"
        with _plot_lock:
            run.maps[key] = plot_spot_values(run.adata, values, path, title)
    return run.maps[key]


def plot_spot_values(adata, values: np.ndarray, path: str | Path, title: str,
                     cmap: str = "magma") -> Path:
    """One value per spot drawn over the H&E thumbnail (as the gene maps), with a colour bar."""
    from mclstexp_hub.prediction.io import save_figure_atomic
    from mclstexp_hub.visualization.spatial_maps import _draw, _pyplot, spatial_frame

    plt = _pyplot()
    image, xy, diameter = spatial_frame(adata)
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, ax = plt.subplots(figsize=(6, 5.6), layout="constrained")
    mappable = _draw(ax, image, xy, diameter, values, cmap, low, high if high > low else low + 1,
                     title)
    units = str(adata.uns.get("mclstexp", {}).get("units", ""))
    fig.colorbar(mappable, ax=ax, shrink=0.7, label=units)
    try:
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def user_message(exc: BaseException, uploads: tuple[Any, ...] = ()) -> str:
    """One clear line for the page: the error's own text for what the user can fix (upload
    paths shortened to their file names), a short note for anything unexpected."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    for upload in uploads:
        path = _path(upload)
        if path is not None:
            text = text.replace(str(path), path.name)
    if isinstance(exc, _USER_ERRORS):
        return text or type(exc).__name__
    return (f"unexpected error ({type(exc).__name__}: {text}); the server log has the "
            "details — please report it.")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "slide"


__all__ = [
    "DEFAULT_N_CLUSTERS",
    "SPOTS_CSV",
    "SPOTS_TILE",
    "SPOT_MODES",
    "AppRun",
    "default_device",
    "default_model",
    "gene_map",
    "get_pipeline",
    "plot_spot_values",
    "run_prediction",
    "neighbour_spread_map",
    "neighbour_spread_values",
    "user_message",
]
