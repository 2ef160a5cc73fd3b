"""Whole-slide prediction without a framework: spot tables, the batched slide loop, AnnData.

Shared by the `spatial-gene-expression` pipeline (PyTorch tower) and the PyTorch-free ONNX
Runtime runtime of `mclstexp predict`: both hand `predict_spots` their own `embed` and
`retrieve` callables, so reading, batching, the reader thread, the blank-slide check, the
provenance record and the AnnData layout are one implementation.

Hub-bound remote code: imports only third-party packages (NumPy, PIL; pandas, anndata and tqdm
when used) and, relatively, its siblings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .slide_io_mclstexp import CROP_CONVENTION, Slide

TASK = "spatial-gene-expression"
DEFAULT_SLIDE_BATCH_SIZE = 32
HIRES_MAX_SIZE = 2000  # longest side of the stored thumbnail, as Space Ranger's hires image


# ---------------------------------------------------------------------------- slide reading
def slide_thumbnail(slide: Slide, max_size: int = HIRES_MAX_SIZE) -> tuple[np.ndarray, float]:
    """(thumbnail uint8 (h, w, 3), scale factor full-resolution → thumbnail pixels)."""
    thumb = np.asarray(slide.thumbnail(max_size).convert("RGB"), dtype=np.uint8)
    return thumb, thumb.shape[1] / slide.width


# ------------------------------------------------------------------------------ spot tables
def spot_table(spots: Any):
    """A DataFrame with `pixel_x`, `pixel_y` (full-resolution centres) and a unique `spot_id`."""
    import pandas as pd

    if isinstance(spots, pd.DataFrame):
        missing = [c for c in ("pixel_x", "pixel_y") if c not in spots.columns]
        if missing:
            raise ValueError(
                f"spots table lacks column(s) {missing}; it needs `pixel_x` and `pixel_y` "
                "(full-resolution pixel centres) and optionally `spot_id`. Columns found: "
                f"{list(spots.columns)[:12]}."
            )
        table = spots.reset_index(drop=True).copy()
    else:
        xy = np.asarray(spots, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(
                f"spots must be a DataFrame with pixel_x/pixel_y or an (n, 2) array of "
                f"full-resolution (x, y) pixel centres; got shape {xy.shape}."
            )
        table = pd.DataFrame({"pixel_x": xy[:, 0], "pixel_y": xy[:, 1]})
    if len(table) == 0:
        raise ValueError("spots table is empty: give at least one spot centre.")
    xy = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise ValueError(f"spots: {int((~np.isfinite(xy)).any(axis=1).sum())} spot(s) have "
                         "missing/non-numeric pixel_x/pixel_y.")
    table["pixel_x"], table["pixel_y"] = xy[:, 0], xy[:, 1]
    if "spot_id" not in table.columns:
        width = len(str(len(table) - 1))
        table["spot_id"] = [f"spot_{i:0{width}d}" for i in range(len(table))]
    table["spot_id"] = table["spot_id"].astype(str)
    dup = table["spot_id"][table["spot_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"spots: duplicate spot_id(s) {list(dup[:10])}; each spot must appear once.")
    return table


def check_spots_inside(table, width: int, height: int, image_name: str) -> None:
    """Refuse spot centres outside the image (wrong image/coordinate pairing)."""
    x, y = table["pixel_x"].to_numpy(), table["pixel_y"].to_numpy()
    outside = ~((x >= 0) & (x < width) & (y >= 0) & (y < height))
    if outside.any():
        bad = table["spot_id"][outside].tolist()
        raise ValueError(
            f"{image_name}: {len(bad)} spot centre(s) lie outside the {width}x{height} image, e.g. "
            f"{bad[:10]}. Spot coordinates must be full-resolution pixels of this image (not "
            "hires/lowres PNG pixels); check that the spots belong to this image."
        )


# ------------------------------------------------------------------------------ AnnData
def _plain(value: Any) -> Any:
    """A value h5ad can store in `uns` (None → "", nested dicts kept, numpy → Python)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if all(isinstance(v, str) for v in items) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in items
        ):
            return items
        return json.dumps(items, default=str)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (str, int, float, bool, np.ndarray)):
        return value
    return str(value)


def build_prediction_anndata(
    expression: np.ndarray,
    gene_names: list[str],
    spots,
    thumbnail: np.ndarray,
    scalefactor: float,
    spot_diameter_fullres: float,
    library_id: str,
    provenance: dict[str, Any],
    image_metadata: dict[str, Any] | None = None,
    neighbour_spread: np.ndarray | None = None,
):
    """Predicted expression as AnnData that `scanpy.pl.spatial` draws unchanged.

    `neighbour_spread` (n_spots, n_genes), the neighbours' weighted spread, goes to
    `layers["neighbour_spread"]` and its mean over genes to `obs["neighbour_spread"]`.
    """
    import anndata as ad
    import pandas as pd

    obs = spots.copy()
    obs.index = pd.Index(obs["spot_id"].astype(str).to_numpy(), name=None)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype(str)
    adata = ad.AnnData(
        X=np.ascontiguousarray(expression, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(g) for g in gene_names])),
    )
    if neighbour_spread is not None:
        spread = np.ascontiguousarray(neighbour_spread, dtype=np.float32)
        if spread.shape != adata.shape:
            raise ValueError(f"neighbour_spread has shape {spread.shape}; expected {adata.shape}.")
        adata.layers["neighbour_spread"] = spread
        adata.obs["neighbour_spread"] = spread.mean(axis=1) if spread.shape[1] else 0.0
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": np.ascontiguousarray(thumbnail, dtype=np.uint8)},
            "scalefactors": {
                "tissue_hires_scalef": float(scalefactor),
                "spot_diameter_fullres": float(spot_diameter_fullres),
            },
            "metadata": _plain(image_metadata or {}),
        }
    }
    adata.uns["mclstexp"] = _plain(provenance)
    return adata


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - stdlib
        return "unknown"
    try:
        return version("mclstexp-hub")
    except PackageNotFoundError:
        return "not installed (loaded as remote code)"


def _transformers_version() -> str:
    """The installed transformers version, read from its metadata (importing it takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------- the slide loop
def predict_spots(
    reader: Slide,
    table,
    *,
    patch_size: int,
    batch_size: int,
    n_genes: int,
    pixels: Callable[[list[np.ndarray]], Any],
    embed: Callable[[Any], Any],
    retrieve: Callable[[Any], tuple[np.ndarray, np.ndarray]],
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every spot of `table` on `reader`: (expression, neighbour spread), (n, n_genes).

    Patches are cut and turned into model input (`pixels(list of uint8 (S, S, 3))`) a batch at a
    time on a reader thread while `embed(batch)` runs the image tower on the previous batch and
    `retrieve(embeddings)` returns (expression, spread) as float arrays, so only the
    (n_spots, n_genes) result grows with the slide. Refuses a slide whose every patch is one
    flat colour.
    """
    check_spots_inside(table, reader.width, reader.height, reader.name)
    xy = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    out = np.empty((len(table), n_genes), dtype=np.float32)
    spread = np.empty_like(out)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(table), unit="spot", desc="predict")

    def load(start: int) -> tuple[int, int, Any]:
        """Cut and scale one batch (runs on the reader thread)."""
        chunk = xy[start : start + batch_size]
        patches = [reader.read_patch(cx, cy, patch_size) for cx, cy in chunk]
        uniform = sum(int(p.min() == p.max()) for p in patches)
        return len(chunk), uniform, pixels(patches)

    n_uniform = 0
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mclstexp-patches") as pool:
            starts = list(range(0, len(table), batch_size))
            pending = pool.submit(load, starts[0]) if starts else None
            for i, start in enumerate(starts):
                n, uniform, batch = pending.result()
                pending = pool.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
                n_uniform += uniform
                expression, batch_spread = retrieve(embed(batch))
                out[start : start + n] = np.asarray(expression, dtype=np.float32)
                spread[start : start + n] = np.asarray(batch_spread, dtype=np.float32)
                if bar is not None:
                    bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    if n_uniform == len(table):
        raise ValueError(
            f"{reader.name}: every patch is a single flat colour (a blank, black or white image?); "
            "refusing to predict from no tissue. Check the image and the spot coordinates."
        )
    return out, spread


def slide_anndata(
    reader: Slide,
    table,
    expression: np.ndarray,
    spread: np.ndarray,
    *,
    config: Any,
    bank: Any,
    k: int,
    distance: str,
    weighting: str,
    device: str,
    precision: str,
    precision_requested: str,
    backend: str,
    library_id: str | None = None,
    spot_diameter: float | None = None,
    provenance: dict[str, Any] | None = None,
):
    """The prediction as AnnData with its provenance record in `uns["mclstexp"]`.

    `config`: the model config (attributes gene_names, patch_size, pixel_scaling, image_encoder,
    expression_units, expression_transform, _name_or_path); `bank`: an object with
    `__len__`, section_ids, patient_ids and metadata (the spot bank).
    """
    thumb, scale = slide_thumbnail(reader, HIRES_MAX_SIZE)
    library_id = library_id or (reader.path.stem if reader.path else "slide")
    size = int(config.patch_size)
    record = {
        "task": TASK,
        "model": str(getattr(config, "_name_or_path", "") or ""),
        "model_revision": "",  # filled by callers that know it (mclstexp predict does)
        "units": config.expression_units or bank.metadata.get("expression_units")
        or "unknown (the checkpoint does not record its expression units)",
        "expression_transform": config.expression_transform
        or bank.metadata.get("expression_transform") or "unknown",
        "retrieval_k": k,
        "retrieval_distance": distance,
        "retrieval_weighting": weighting,
        "patch_size": size,
        "pixel_scaling": config.pixel_scaling,
        "image_encoder": config.image_encoder,
        "spot_bank_n_spots": len(bank),
        "spot_bank_sections": sorted(set(bank.section_ids)),
        "spot_bank_patients": sorted(set(bank.patient_ids)),
        "spot_bank_metadata_json": json.dumps(bank.metadata, default=str, sort_keys=True),
        "package_version": _package_version(),
        "transformers_version": _transformers_version(),
        "device": str(device),
        "image": str(reader.path or ""),
        "crop_convention": CROP_CONVENTION,
        "precision": precision,
        "precision_requested": str(precision_requested),
        "image_width": reader.width,
        "image_height": reader.height,
        "n_spots": len(table),
        "library_id": library_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.update(provenance or {})
    record["image_tower_backend"] = backend  # what this run used
    return build_prediction_anndata(
        expression,
        list(config.gene_names),
        table,
        thumb,
        scale,
        float(spot_diameter or size),
        library_id,
        record,
        image_metadata={"source_image": str(reader.path or ""), "width": reader.width,
                        "height": reader.height},
        neighbour_spread=spread,
    )


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    return batch_size


__all__ = [
    "DEFAULT_SLIDE_BATCH_SIZE", "HIRES_MAX_SIZE", "TASK", "build_prediction_anndata",
    "check_batch_size", "check_spots_inside", "predict_spots",
    "slide_anndata", "slide_thumbnail", "spot_table",
]
