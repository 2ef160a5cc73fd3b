"""Generic sections: an ``.h5ad`` with ``obsm["spatial"]`` (full-resolution pixels) + an image.

Raw counts are taken from ``layers["counts"]`` when present, else from ``X``; values must be
non-negative, finite and (unless ``allow_non_integer``) whole numbers, so that normalised
matrices are not mistaken for counts. Integer grid coordinates come from ``obs`` columns
``array_x``/``array_y`` (or Visium's ``array_col``/``array_row``); when absent they are derived
from the pixel positions and the nearest-neighbour spot pitch, and the metadata says so.
``H5adReader`` holds the logic; ``read_h5ad`` is the entry point kept for existing callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, preview
from .base import SectionReader, register_reader

if TYPE_CHECKING:  # heavy at import time: loaded on first read (keeps `mclstexp --help` fast)
    import anndata as ad
    import numpy as np

SOURCE = "user-supplied AnnData (.h5ad)"


def _grid_from_pixels(xy: np.ndarray) -> np.ndarray:
    """Integer grid positions: pixel offsets divided by the median nearest-neighbour pitch."""
    import numpy as np
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return np.zeros_like(xy, dtype=np.int64)

    dist, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(dist[:, 1]))
    if pitch <= 0:
        raise DataError("obsm['spatial']: several spots share one pixel position")
    return np.rint((xy - xy.min(axis=0)) / pitch).astype(np.int64)


def _load(path: Path, obs_only: bool = False) -> ad.AnnData:
    """The AnnData at ``path``; ``obs_only`` opens it backed (the matrix stays on disk)."""
    import anndata as ad

    if not path.is_file():
        raise FileNotFoundError(f"h5ad file not found: {path}")
    try:
        return ad.read_h5ad(path, backed="r") if obs_only else ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: cannot read AnnData ({exc}); is the file complete?") from exc


def _section_names(adata: ad.AnnData, path: Path, section_key: str) -> list[str]:
    """The sections of ``obs[section_key]`` in sorted order, else the file's one section."""
    if section_key in adata.obs and adata.obs[section_key].nunique() > 1:
        return sorted(adata.obs[section_key].astype(str).unique())
    if section_key in adata.obs and adata.n_obs:
        return [str(adata.obs[section_key].iloc[0])]
    return [path.stem]


@register_reader
class H5adReader(SectionReader):
    """One section from an ``.h5ad``; if it holds several (``obs[section_key]``), pick one.

    image: the full-resolution H&E image the pixel positions refer to (None: expression only).
    allow_non_integer: accept fractional counts (otherwise non-integer values are taken for
        normalised data and refused).
    """

    name = "h5ad"
    layout = "an .h5ad file with raw counts and obsm['spatial'] in full-resolution pixels"
    image_from_argument = True
    one_section_per_input = True
    input_is_file = True

    def __init__(
        self,
        image: str | Path | None = None,
        *,
        section_key: str = "section",
        patient: str | None = None,
        microns_per_pixel: float | None = None,
        label_key: str = "label",
        allow_non_integer: bool = False,
    ) -> None:
        self.image = image
        self.section_key = section_key
        self.patient = patient
        self.microns_per_pixel = microns_per_pixel
        self.label_key = label_key
        self.allow_non_integer = allow_non_integer

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """Sections of ``obs[section_key]``, or the one section named after the file."""
        if with_images_only and self.image is None:
            return []
        path = Path(data_dir)
        return _section_names(_load(path, obs_only=True), path, self.section_key)

    def read_section(self, data_dir: str | Path, section: str | None) -> ad.AnnData:
        """``section`` of a multi-section file, or the file's one section named ``section``."""
        path = Path(data_dir)
        return self._from_adata(_load(path), path, section)

    def _from_adata(self, adata: ad.AnnData, path: Path, section: str | None) -> ad.AnnData:
        import numpy as np
        import pandas as pd

        from ._section import make_section

        section_key, label_key = self.section_key, self.label_key
        if "spatial" not in adata.obsm:
            raise DataError(
                f"{path}: obsm['spatial'] missing; store full-resolution pixel (x, y) spot "
                "centres there"
            )
        names = _section_names(adata, path, section_key)
        if len(names) > 1:
            if section is None:
                raise DataError(
                    f"{path}: obs[{section_key!r}] holds several sections ({preview(names)}); "
                    "choose one with section=… (--sections)"
                )
            if section not in names:
                raise DataError(
                    f"{path}: section {section!r} not in obs[{section_key!r}] {names}"
                )
            adata = adata[adata.obs[section_key].astype(str) == section].copy()
        elif section is None:
            section = names[0]
        counts = adata.layers.get("counts", adata.X)
        field = "layers['counts']" if "counts" in adata.layers else "X"
        if counts is None:
            raise DataError(f"{path}: no counts in X or layers['counts']")
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
        patient = self.patient
        if patient is None:
            patient = str(adata.obs["patient"].iloc[0]) if "patient" in adata.obs else section
        image_path = self.image
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
            microns_per_pixel=self.microns_per_pixel,
            mpp_source="given" if self.microns_per_pixel else None,
            integer_counts=not self.allow_non_integer,
            extra_metadata={
                "h5ad_path": str(path),
                "array_coordinates": grid_source,
                "has_image": image_path is not None,
            },
        )


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
    reader = H5adReader(
        image_path,
        section_key=section_key,
        patient=patient,
        microns_per_pixel=microns_per_pixel,
        label_key=label_key,
        allow_non_integer=allow_non_integer,
    )
    return reader.read_section(path, section)
