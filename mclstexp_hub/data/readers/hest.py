"""HEST-1k samples (MahmoodLab, https://huggingface.co/datasets/MahmoodLab/hest).

A HEST root holds, per sample id (e.g. ``TENX95``, ``MEND139``):

* ``st/{id}.h5ad`` — raw counts in ``X`` (or ``layers["counts"]``), ``obsm["spatial"]`` =
  full-resolution pixel (x, y) spot centres, ``obs`` ``array_row``/``array_col`` (grid),
  ``pxl_col_in_fullres``/``pxl_row_in_fullres`` (the same centres) and ``in_tissue``;
* ``wsis/{id}.tif`` — the full-resolution H&E as a pyramidal generic TIFF;
* ``metadata/{id}.json`` — the sample's row of the HEST metadata table:
  ``pixel_size_um_estimated`` (µm per full-resolution pixel, the value HEST itself patches
  with), ``st_technology``, ``organ``, ``patient``, ``species``, ``spot_diameter`` and
  ``inter_spot_dist`` (µm), ``fullres_px_width``/``fullres_px_height``, ``license``, …;
* optionally ``patches/{id}.h5`` — HEST's own 224 px patches at 0.5 µm/px. They are *not*
  used: patches are cut here from the WSI at its real resolution (``--target-mpp`` resamples
  them to a common µm/px, as for every reader), so all datasets share one crop convention.

A sample is listed when its three required files exist. ``patient`` of the metadata becomes
``obs["patient"]`` (the leave-one-patient-out unit); HEST leaves it empty for many samples,
and then the sample id stands in (recorded as ``patient_source``). Spots with
``in_tissue == 0`` are left out. The metadata fields are kept in
``uns["spatial"][id]["metadata"]["source_metadata"]``, which ``data build`` copies into the
dataset metadata per section.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, preview
from .base import SectionReader, register_reader

if TYPE_CHECKING:  # heavy at import time: loaded on first read (keeps `mclstexp --help` fast)
    import anndata as ad

log = logging.getLogger(__name__)

SOURCE = "HEST-1k (MahmoodLab/hest)"
LICENSE_NOTE = (
    "HEST-1k (MahmoodLab/hest on the Hugging Face Hub) is released under CC BY-NC-SA 4.0; each "
    "sample also carries the licence of its original study (metadata field 'license')"
)
REQUIRED = {"st": ".h5ad", "wsis": ".tif", "metadata": ".json"}
"""Sub-folder → file suffix of the files every sample needs."""

MPP_FIELDS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
"""Resolution fields of the metadata JSON, in order of preference (HEST patches with the first)."""

KEPT_FIELDS = (
    "id",
    "dataset_title",
    "st_technology",
    "organ",
    "tissue",
    "species",
    "patient",
    "disease_state",
    "oncotree_code",
    "preservation_method",
    "spot_diameter",
    "inter_spot_dist",
    "spots_under_tissue",
    "nb_genes",
    "pixel_size_um_estimated",
    "pixel_size_um_embedded",
    "magnification",
    "fullres_px_width",
    "fullres_px_height",
    "license",
    "study_link",
    "hest_version_added",
)
"""Metadata fields recorded with each section (those present; others are ignored)."""

PIXEL_AGREEMENT_PX = 1.0
"""``obsm["spatial"]`` and ``pxl_*_in_fullres`` must agree to within this many pixels."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _plain(value: Any) -> Any:
    """A JSON/h5ad-safe scalar (str, int, float, bool) or None for missing values."""
    if _missing(value):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _paths(root: Path, sample: str) -> dict[str, Path]:
    return {sub: root / sub / f"{sample}{suffix}" for sub, suffix in REQUIRED.items()}


def _ids(root: Path) -> dict[str, list[Path]]:
    """Every sample id seen under ``root`` → the required files it lacks."""
    seen: set[str] = set()
    for sub, suffix in REQUIRED.items():
        folder = root / sub
        if folder.is_dir():
            seen.update(p.name[: -len(suffix)] for p in folder.iterdir()
                        if p.name.endswith(suffix) and not p.name.startswith("."))
    return {s: [p for p in _paths(root, s).values() if not p.is_file()] for s in sorted(seen)}


def read_metadata(path: Path) -> dict[str, Any]:
    """The sample's metadata JSON as a dict; unreadable or non-object files are errors."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"HEST metadata file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object (the sample's metadata), got "
                        f"{type(meta).__name__}")
    return meta


def _mpp(meta: dict[str, Any], path: Path) -> tuple[float, str]:
    """(µm per full-resolution pixel, the field it came from)."""
    for field in MPP_FIELDS:
        value = meta.get(field)
        if _missing(value):
            continue
        try:
            mpp = float(value)
        except (TypeError, ValueError):
            mpp = float("nan")
        if not (math.isfinite(mpp) and mpp > 0):
            raise DataError(f"{path}: {field} = {value!r} must be a positive number (µm per "
                            "full-resolution pixel, e.g. 0.25)")
        return mpp, f"HEST metadata {field}"
    raise DataError(f"{path}: no pixel size; the HEST metadata must give {MPP_FIELDS[0]} "
                    "(µm per full-resolution pixel)")


@register_reader
class HestReader(SectionReader):
    """HEST-1k samples: ``st/{id}.h5ad`` + ``wsis/{id}.tif`` + ``metadata/{id}.json``."""

    name = "hest"
    license_note = LICENSE_NOTE
    layout = ("a HEST-1k folder with st/{id}.h5ad, wsis/{id}.tif and metadata/{id}.json per "
              "sample (patches/{id}.h5 optional, unused)")

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """Sample ids with all three required files; partial samples are named in a warning
        (or in the error, when no sample is complete)."""
        root = Path(data_dir)
        ids = _ids(root)
        complete = [s for s, lacks in ids.items() if not lacks]
        partial = {s: lacks for s, lacks in ids.items() if lacks}
        if partial:
            detail = "; ".join(f"{s}: {', '.join(str(p) for p in lacks)} missing"
                               for s, lacks in list(partial.items())[:5])
            if len(partial) > 5:
                detail += f"; … {len(partial) - 5} more"
            if not complete:
                raise FileNotFoundError(
                    f"{root}: no complete HEST sample; every sample needs st/ID.h5ad, "
                    f"wsis/ID.tif and metadata/ID.json — {detail}"
                )
            log.warning("HEST samples skipped under %s (incomplete): %s", root, detail)
        return complete

    def read_section(self, data_dir: str | Path, section: str) -> ad.AnnData:
        import numpy as np
        import pandas as pd

        from ._section import make_section
        from .h5ad import _grid_from_pixels, _load

        root = Path(data_dir)
        paths = _paths(root, section)
        lacks = [str(p) for p in paths.values() if not p.is_file()]
        if lacks:
            raise FileNotFoundError(
                f"HEST sample {section}: {', '.join(lacks)} not found; each sample needs "
                "st/ID.h5ad, wsis/ID.tif and metadata/ID.json under --data-dir"
            )
        meta = read_metadata(paths["metadata"])
        mpp, mpp_source = _mpp(meta, paths["metadata"])
        adata = _load(paths["st"])
        where = str(paths["st"])
        n_total = adata.n_obs
        if "in_tissue" in adata.obs:
            flag = pd.to_numeric(adata.obs["in_tissue"], errors="coerce")
            if flag.isna().any():
                raise DataError(f"{where}: obs['in_tissue'] must be 0/1")
            adata = adata[flag.to_numpy() == 1].copy()
        xy = self._centres(adata, where)
        if {"array_col", "array_row"} <= set(adata.obs.columns):
            grid = adata.obs[["array_col", "array_row"]].to_numpy(dtype=float)
            grid_source = "obs array_col/array_row"
        else:
            grid = _grid_from_pixels(xy).astype(float) if len(xy) else np.zeros((0, 2))
            grid_source = "derived from obsm['spatial'] and the median nearest-neighbour pitch"
        counts = adata.layers.get("counts", adata.X)
        field = "layers['counts']" if "counts" in adata.layers else "X"
        spots = pd.DataFrame({
            "spot_id": adata.obs_names.astype(str),
            "array_x": grid[:, 0],
            "array_y": grid[:, 1],
            "pixel_x": xy[:, 0],
            "pixel_y": xy[:, 1],
        })
        patient_raw = meta.get("patient")
        if _missing(patient_raw):
            patient, patient_source = section, "sample id (the HEST metadata gives no patient)"
        else:
            patient, patient_source = str(patient_raw), "HEST metadata patient"
        kept = {k: _plain(meta[k]) for k in KEPT_FIELDS if k in meta}
        kept = {k: v for k, v in kept.items() if v is not None}
        scalefactors: dict[str, Any] = {}
        spot_um = _plain(meta.get("spot_diameter"))
        if isinstance(spot_um, (int, float)) and spot_um > 0:
            scalefactors["spot_diameter_fullres"] = float(spot_um) / mpp
        patches_h5 = root / "patches" / f"{section}.h5"
        adata_out = make_section(
            counts,
            [str(g) for g in adata.var_names],
            spots,
            section=section,
            patient=patient,
            source=SOURCE,
            where=f"{where} ({field})",
            image_path=paths["wsis"],
            microns_per_pixel=mpp,
            mpp_source=mpp_source,
            scalefactors=scalefactors,
            extra_metadata={
                "has_image": True,
                "h5ad_path": str(paths["st"]),
                "metadata_path": str(paths["metadata"]),
                "hest_patches_h5": str(patches_h5) if patches_h5.is_file() else None,
                "array_coordinates": grid_source,
                "patient_source": patient_source,
                "st_technology": kept.get("st_technology"),
                "organ": kept.get("organ"),
                "spot_diameter_um": float(spot_um) if scalefactors else None,
                "spots_not_in_tissue": int(n_total - adata.n_obs),
                "source_metadata": kept,
            },
        )
        self._check_slide(adata_out, paths["wsis"], meta)
        return adata_out

    @staticmethod
    def _centres(adata: ad.AnnData, where: str):
        """Full-resolution (x, y) spot centres: ``obsm["spatial"]``, else ``pxl_*_in_fullres``;
        when both exist they must agree."""
        import numpy as np

        cols = ["pxl_col_in_fullres", "pxl_row_in_fullres"]
        has_cols = set(cols) <= set(adata.obs.columns)
        if "spatial" in adata.obsm:
            xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
            if xy.ndim != 2 or xy.shape[1] < 2:
                raise DataError(f"{where}: obsm['spatial'] must be (n_spots, 2), got {xy.shape}")
            xy = xy[:, :2]
            if has_cols and len(xy):
                other = adata.obs[cols].to_numpy(dtype=np.float64)
                off = np.abs(xy - other).max(axis=1)
                bad = off > PIXEL_AGREEMENT_PX
                if np.any(bad):
                    raise DataError(
                        f"{where}: obsm['spatial'] and obs {cols} disagree by up to "
                        f"{float(np.nanmax(off)):.1f} px for spot(s) "
                        f"{preview(list(adata.obs_names[bad]))}; both must be full-resolution "
                        "pixels of wsis/ID.tif"
                    )
            return xy
        if has_cols:
            return adata.obs[cols].to_numpy(dtype=np.float64)
        raise DataError(f"{where}: no spot positions; HEST h5ad files carry obsm['spatial'] "
                        f"(full-resolution pixel x, y) or obs {cols}")

    @staticmethod
    def _check_slide(adata: ad.AnnData, wsi: Path, meta: dict[str, Any]) -> None:
        """Every spot centre lies on the WSI; a size differing from the metadata is logged."""
        from ...models.mclstexp.slide_io_mclstexp import open_slide
        from ..patches import check_spots_inside

        with open_slide(wsi) as slide:
            want = (meta.get("fullres_px_width"), meta.get("fullres_px_height"))
            if all(isinstance(v, (int, float)) for v in want) and (
                (int(want[0]), int(want[1])) != (slide.width, slide.height)
            ):
                log.warning("%s is %d×%d px but its HEST metadata says %d×%d px", wsi,
                            slide.width, slide.height, int(want[0]), int(want[1]))
            check_spots_inside(adata, slide)


def read_hest(data_dir: str | Path, sections: list[str] | None = None) -> list[ad.AnnData]:
    """HEST-1k samples under ``data_dir`` (default: every complete sample), one AnnData each."""
    return HestReader().read(data_dir, sections)
