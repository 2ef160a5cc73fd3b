"""A prediction AnnData → a SpatialData Zarr store (`mclstexp predict --out pred.zarr`).

The store holds, for library ``LIB`` (``uns["spatial"]``'s key, made a valid element name):

* ``images/LIB_hires_image`` — the prediction's thumbnail (``uns["spatial"][LIB]["images"]
  ["hires"]``), mapped to the ``global`` coordinate system (full-resolution pixels) by a
  scale of ``1 / tissue_hires_scalef``; the full-resolution slide itself is not copied (it
  stays in its own file, named in the table's provenance);
* ``shapes/LIB_spots`` — one circle per spot at ``obsm["spatial"]``, radius
  ``spot_diameter_fullres / 2`` (full-resolution pixels, identity to ``global``);
* ``tables/table`` — the predictions (``X``), ``layers["observed"]`` / ``layers["neighbour_spread"]``
  when present, ``obs``/``var`` as in the .h5ad, annotating the shapes through
  ``obs["region"]`` (= ``LIB_spots``) and ``obs["instance_id"]`` (= the circle's index).

The root attributes carry ``{"mclstexp": {"format": "mclstexp-prediction", ...}}``, which
``mclstexp_hub.outputs.is_prediction_zarr`` recognises, so ``--overwrite`` replaces only a
store this tool wrote. The store is written into a hidden sibling folder and renamed into
place: it is complete or absent. spatialdata is imported on first use (it is slow to import
and an optional extra: ``pip install 'mclstexp-hub[spatialdata]'``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import (
    ZARR_FORMAT_MARKER,
    check_output,
    is_prediction_zarr,
    replace_folder,
    staging,
)

SUFFIX = ".zarr"
TABLE_NAME = "table"
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
_EXTRA = ("writing a SpatialData store (--out *.zarr) needs spatialdata: "
          "pip install 'mclstexp-hub[spatialdata]'")


def require_spatialdata() -> None:
    """ImportError with the install hint when spatialdata is missing (checked before work)."""
    import importlib.util

    if importlib.util.find_spec("spatialdata") is None:
        raise ImportError(_EXTRA)


def check_zarr_output(path: str | Path, overwrite: bool, inputs: Iterable[Any] = ()) -> Path:
    """Validate a ``.zarr`` output before any slow work (same rules as the .h5ad output)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"output {path} must end in {SUFFIX} for a SpatialData store.")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} is a file; a SpatialData store is a folder ending in "
                         f"{SUFFIX}.")
    return check_output(path, overwrite=overwrite, inputs=inputs, is_ours=is_prediction_zarr,
                        what="SpatialData store", option="--out")


def element_name(library_id: str) -> str:
    """``library_id`` as a SpatialData element name (letters, digits, ``_ - .``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(library_id)).lstrip("._")
    return name or "slide"


def _library(adata) -> tuple[str, dict[str, Any]]:
    spatial = adata.uns.get("spatial") or {}
    if len(spatial) != 1:
        raise ValueError(f"prediction AnnData must hold one library in uns['spatial'], found "
                         f"{list(spatial)}")
    library_id, library = next(iter(spatial.items()))
    return str(library_id), library


def to_spatialdata(adata):
    """The SpatialData object of a prediction AnnData (see the module docstring)."""
    import anndata as ad
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    library_id, library = _library(adata)
    base = element_name(library_id)
    shapes_name, image_name = f"{base}_spots", f"{base}_hires_image"
    scalefactors = dict(library.get("scalefactors") or {})
    diameter = float(scalefactors.get("spot_diameter_fullres") or 0)
    if not diameter > 0:
        raise ValueError("uns['spatial'][...]['scalefactors']['spot_diameter_fullres'] must be "
                         "> 0 to draw the spots as circles")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    n = adata.n_obs
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n, diameter / 2.0),
        index=pd.Index(np.arange(n), name=INSTANCE_KEY),
        transformations={"global": Identity()},
    )
    images = {}
    hires = (library.get("images") or {}).get("hires")
    if hires is not None:
        scalef = float(scalefactors.get("tissue_hires_scalef") or 1.0)
        rgb = np.asarray(hires)
        if rgb.ndim == 2:
            rgb = rgb[..., None]
        images[image_name] = Image2DModel.parse(
            np.ascontiguousarray(np.moveaxis(rgb[..., :3], -1, 0)), dims=("c", "y", "x"),
            c_coords=["r", "g", "b"][: rgb.shape[-1]],
            transformations={"global": Scale([1.0 / scalef, 1.0 / scalef], axes=("y", "x"))},
        )
    uns = {k: v for k, v in adata.uns.items() if k != "spatial"}
    # the thumbnail now lives in images/; keep the scale factors and metadata with the table
    uns["spatial"] = {library_id: {k: v for k, v in library.items() if k != "images"}}
    table = ad.AnnData(
        X=np.asarray(adata.X, dtype=np.float32), obs=adata.obs.copy(), var=adata.var.copy(),
        layers={k: np.asarray(v) for k, v in adata.layers.items()},
        obsm={k: np.asarray(v) for k, v in adata.obsm.items()}, uns=uns,
    )
    table.obs[REGION_KEY] = pd.Categorical([shapes_name] * n)
    table.obs[INSTANCE_KEY] = np.arange(n, dtype=np.int64)
    table = TableModel.parse(table, region=shapes_name, region_key=REGION_KEY,
                             instance_key=INSTANCE_KEY)
    info = adata.uns.get("mclstexp") or {}
    marker = {"format": ZARR_FORMAT_MARKER, "library_id": library_id,
              "image": str(info.get("image", "")), "units": str(info.get("units", ""))}
    return SpatialData(images=images, shapes={shapes_name: shapes},
                       tables={TABLE_NAME: table}, attrs={"mclstexp": marker})


def write_spatialdata_atomic(adata, path: str | Path, overwrite: bool = False,
                             inputs: Iterable[Any] = ()) -> Path:
    """Write ``adata`` as a SpatialData store at ``path`` (temp folder + rename)."""
    path = check_zarr_output(path, overwrite, inputs=inputs)
    require_spatialdata()
    sdata = to_spatialdata(adata)
    with staging(path.parent, f".{path.name}.partial-") as tmp:
        staged = tmp / path.name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*autosharding.*")
            sdata.write(staged)
        replace_folder(staged, path)  # --overwrite was checked to be ours above
    return path


__all__ = [
    "check_zarr_output",
    "element_name",
    "require_spatialdata",
    "to_spatialdata",
    "write_spatialdata_atomic",
]
