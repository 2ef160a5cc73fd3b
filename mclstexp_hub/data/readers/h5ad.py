"""Generic sections: an ``.h5ad`` with ``obsm["spatial"]`` (full-resolution pixels) + an image.

Raw counts are taken from ``layers["counts"]`` when present, else from ``X``; values must be
non-negative, finite and (unless ``allow_non_integer``) whole numbers, so that normalised
matrices are not mistaken for counts. Integer grid coordinates come from ``obs`` columns
``array_x``/``array_y`` (or Visium's ``array_col``/``array_row``); when absent they are derived
from the pixel positions and the nearest-neighbour spot pitch, and the metadata says so.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import DataError, preview
from ._section import make_section

SOURCE = "user-supplied AnnData (.h5ad)"


def _grid_from_pixels(xy: np.ndarray) -> np.ndarray:
    """Integer grid positions: pixel offsets divided by the median nearest-neighbour pitch."""
    if len(xy) < 2:
        return np.zeros_like(xy, dtype=np.int64)
    dist, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(dist[:, 1]))
    if pitch <= 0:
        raise DataError("obsm['spatial']: several spots share one pixel position")
    return np.rint((xy - xy.min(axis=0)) / pitch).astype(np.int64)


def read_h5ad(
    path: str | Path,
    image_path: str | Path | None = None,
    section: str | None = None,
    *,
    section_key: str = "section",
    patient: str | None = None,
    microns_per_pixel: float | None = None,
    label_key: str = "label",
    allow_non_integer: bool = False,
) -> ad.AnnData:
    """One section from an ``.h5ad``; if it holds several (``obs[section_key]``), pick ``section``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"h5ad file not found: {path}")
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: cannot read AnnData ({exc}); is the file complete?") from exc
    if "spatial" not in adata.obsm:
        raise DataError(
            f"{path}: obsm['spatial'] missing; store full-resolution pixel (x, y) spot centres there"
        )
    if section_key in adata.obs and adata.obs[section_key].nunique() > 1:
        present = sorted(adata.obs[section_key].astype(str).unique())
        if section is None:
            raise DataError(
                f"{path}: obs[{section_key!r}] holds several sections ({preview(present)}); "
                "choose one with section=… (--sections)"
            )
        if section not in present:
            raise DataError(f"{path}: section {section!r} not in obs[{section_key!r}] {present}")
        adata = adata[adata.obs[section_key].astype(str) == section].copy()
    elif section is None:
        section = str(adata.obs[section_key].iloc[0]) if section_key in adata.obs else path.stem
    counts = adata.layers.get("counts", adata.X)
    field = "layers['counts']" if "counts" in adata.layers else "X"
    if counts is None:
        raise DataError(f"{path}: no counts in X or layers['counts']")
    values = counts.data if sp.issparse(counts) else np.asarray(counts)
    if (
        not allow_non_integer
        and np.isfinite(values).all()
        and not np.allclose(values, np.round(values))
    ):
        raise DataError(
            f"{path}: {field} holds non-integer values (normalised data?); put raw counts in "
            "layers['counts'] or X, or pass allow_non_integer=True for fractional counts"
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise DataError(f"{path}: obsm['spatial'] must be (n_spots, 2), got {xy.shape}")
    xy = xy[:, :2]
    grid_source = "obs"
    if {"array_x", "array_y"} <= set(adata.obs.columns):
        grid = adata.obs[["array_x", "array_y"]].to_numpy(dtype=float)
    elif {"array_col", "array_row"} <= set(adata.obs.columns):
        grid = adata.obs[["array_col", "array_row"]].to_numpy(dtype=float)
    else:
        grid = _grid_from_pixels(xy).astype(float)
        grid_source = "derived from obsm['spatial'] and the median nearest-neighbour pitch"
    spots = pd.DataFrame(
        {
            "spot_id": adata.obs_names.astype(str),
            "array_x": grid[:, 0],
            "array_y": grid[:, 1],
            "pixel_x": xy[:, 0],
            "pixel_y": xy[:, 1],
            "label": (
                adata.obs[label_key]
                .astype(object)
                .where(adata.obs[label_key].notna(), "")
                .astype(str)
                .to_numpy()
                if label_key in adata.obs
                else ""
            ),
        }
    )
    if patient is None:
        patient = str(adata.obs["patient"].iloc[0]) if "patient" in adata.obs else section
    if image_path is not None and not Path(image_path).is_file():
        raise FileNotFoundError(f"full-resolution image not found: {image_path}")
    return make_section(
        counts,
        list(adata.var_names),
        spots,
        section=str(section),
        patient=str(patient),
        source=SOURCE,
        where=f"{path} ({field})",
        image_path=image_path,
        microns_per_pixel=microns_per_pixel,
        mpp_source="given" if microns_per_pixel else None,
        extra_metadata={
            "h5ad_path": str(path),
            "array_coordinates": grid_source,
            "has_image": image_path is not None,
        },
    )
