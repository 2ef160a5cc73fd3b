"""The one place that assembles and validates a section AnnData, whatever the reader.

Every reader hands its parsed counts and spot table to ``make_section``; the checks here
(duplicate spots, NaN/negative counts, empty sections, coordinate types) therefore hold for
all formats alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, preview

OBS_COLUMNS = ["spot_id", "array_x", "array_y", "pixel_x", "pixel_y", "section", "patient", "label"]


def check_counts(
    matrix: sp.spmatrix | np.ndarray, where: str, *, integer: bool = True
) -> sp.csr_matrix:
    """CSR float32 raw counts; NaN, infinite, negative or (``integer``) fractional values are
    errors naming ``where``. Every reader goes through here (via ``make_section``)."""
    try:
        csr = sp.csr_matrix(matrix, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: counts are not numeric ({exc}); expected raw counts") from None
    data = csr.data
    if data.size:
        bad_nan = ~np.isfinite(data)
        if bad_nan.any():
            raise DataError(
                f"{where}: {int(bad_nan.sum())} count values are NaN or infinite; "
                "counts must be finite non-negative numbers — fix or re-export the matrix"
            )
        if (data < 0).any():
            raise DataError(
                f"{where}: {int((data < 0).sum())} count values are negative (min "
                f"{float(data.min())}); raw UMI counts are expected, not normalised values"
            )
        fractional = data != np.round(data)
        if integer and fractional.any():
            raise DataError(
                f"{where}: {int(fractional.sum())} count values are non-integer (e.g. "
                f"{float(data[fractional][0]):g}); raw counts must be whole numbers — pass the "
                "raw UMI counts, not normalised or scaled values"
            )
    csr.eliminate_zeros()
    return csr


def dropped_spots(
    without_counts: Sequence[str],
    without_spot: Sequence[str],
    *,
    spots_file: str,
    counts_file: str,
    limit: int = 10,
) -> dict[str, Any]:
    """What joining counts to spot positions left out, for ``metadata["dropped_spots"]``.

    ``without_counts``: spot ids of the position file with no counts row; ``without_spot``:
    counts rows with no (selected / in-tissue) spot. ``data build`` refuses a non-empty drop
    unless asked (``--allow-dropped-spots``), and records it in the dataset metadata.
    """
    return {
        "spots_without_counts": len(without_counts),
        "counts_without_spot": len(without_spot),
        "examples_spots_without_counts": [str(i) for i in list(without_counts)[:limit]],
        "examples_counts_without_spot": [str(i) for i in list(without_spot)[:limit]],
        "spots_file": spots_file,
        "counts_file": counts_file,
    }


def make_unique(names: Sequence[str]) -> list[str]:
    """Gene symbols made unique the anndata way (second 'X' → 'X-1')."""
    index = pd.Index([str(n) for n in names])
    return list(ad.utils.make_index_unique(index)) if not index.is_unique else list(index)


def make_section(
    counts: sp.spmatrix | np.ndarray,
    genes: Sequence[str],
    spots: pd.DataFrame,
    *,
    section: str,
    patient: str,
    source: str,
    where: str,
    image_path: str | Path | None = None,
    microns_per_pixel: float | None = None,
    mpp_source: str | None = None,
    scalefactors: dict[str, Any] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    integer_counts: bool = True,
) -> ad.AnnData:
    """Assemble a validated section AnnData.

    ``spots`` must have one row per row of ``counts`` and the columns ``spot_id``, ``array_x``,
    ``array_y``, ``pixel_x``, ``pixel_y`` and optionally ``label``. ``where`` names the input
    file(s) in error messages. ``integer_counts`` False accepts fractional counts (a reader
    option for data that really has them, e.g. h5ad ``allow_non_integer``).
    """
    missing = [c for c in ("spot_id", "array_x", "array_y", "pixel_x", "pixel_y") if c not in spots]
    if missing:
        raise DataError(f"{where}: spot table lacks column(s) {missing}")
    if len(spots) == 0:
        raise DataError(
            f"{where}: section {section} has no spots left after joining counts to spot "
            "positions; check that both files describe the same section"
        )
    if counts.shape[0] != len(spots):
        raise DataError(f"{where}: {counts.shape[0]} count rows but {len(spots)} spots")
    ids = spots["spot_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(
            f"{where}: duplicate spot id(s) {preview(dup)} in section {section}; each spot "
            "must appear once — remove the repeated rows"
        )
    coords = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(coords).all():
        bad = ids[~np.isfinite(coords).all(axis=1)]
        raise DataError(f"{where}: spot(s) {preview(bad)} have missing pixel coordinates")
    grid = spots[["array_x", "array_y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(grid).all() or (grid < 0).any():
        bad = ids[~(np.isfinite(grid).all(axis=1) & (grid >= 0).all(axis=1))]
        raise DataError(
            f"{where}: spot(s) {preview(bad)} have missing or negative array coordinates"
        )
    if microns_per_pixel is not None and not (
        np.isfinite(microns_per_pixel) and microns_per_pixel > 0
    ):
        raise DataError(
            f"{where}: microns per pixel {microns_per_pixel!r} of section {section} must be a "
            "positive number (µm per full-resolution pixel, e.g. 0.5)"
        )
    X = check_counts(counts, where, integer=integer_counts)
    obs = pd.DataFrame(
        {
            "spot_id": ids.to_numpy(),
            "array_x": np.rint(grid[:, 0]).astype(np.int64),
            "array_y": np.rint(grid[:, 1]).astype(np.int64),
            "pixel_x": coords[:, 0],
            "pixel_y": coords[:, 1],
            "section": section,
            "patient": patient,
            "label": (spots["label"].fillna("").astype(str).to_numpy() if "label" in spots else ""),
        },
        index=pd.Index(ids.to_numpy(), name=None),
    )
    var = pd.DataFrame(index=pd.Index(make_unique(genes)))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = coords.astype(np.float64)
    metadata: dict[str, Any] = {
        "image_path": str(image_path) if image_path is not None else None,
        "microns_per_pixel": float(microns_per_pixel) if microns_per_pixel is not None else None,
        "microns_per_pixel_source": mpp_source,
        "source": source,
    }
    if extra_metadata:
        metadata.update(extra_metadata)
    adata.uns["spatial"] = {
        section: {
            "images": {},
            "scalefactors": dict(scalefactors or {}),
            "metadata": metadata,
        }
    }
    return adata


def section_metadata(adata: ad.AnnData) -> dict[str, Any]:
    """``uns["spatial"][section]["metadata"]`` of a single-section AnnData."""
    section = str(adata.obs["section"].iloc[0])
    try:
        return adata.uns["spatial"][section]["metadata"]
    except KeyError as exc:
        raise DataError(
            f"section {section}: uns['spatial'][{section!r}]['metadata'] missing; read the "
            "section with an mclstexp_hub.data.readers function"
        ) from exc


def estimate_mpp_from_pitch(
    array_xy: np.ndarray, pixel_xy: np.ndarray, pitch_um: float
) -> float | None:
    """Microns per pixel from the array pitch: pixel distance per grid step vs. its µm length.

    A least-squares slope of pixel position on array position per axis; the mean of both axes.
    Returns None when the grid spans fewer than two distinct positions on an axis.
    """
    slopes = []
    for axis in (0, 1):
        a = array_xy[:, axis].astype(np.float64)
        p = pixel_xy[:, axis].astype(np.float64)
        if np.unique(a).size < 2:
            continue
        slopes.append(abs(np.polyfit(a, p, 1)[0]))
    if not slopes or np.mean(slopes) == 0:
        return None
    return float(pitch_um / np.mean(slopes))
