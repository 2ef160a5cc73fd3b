"""Where to predict: spot tables from a CSV or a Space Ranger `outs/` folder.

All coordinates are full-resolution image pixels (x = column, y = row), the frame in which
patches were cut for training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def read_spots_csv(path: str | Path) -> pd.DataFrame:
    """A spot table with `pixel_x`, `pixel_y` (full-resolution centres), optional `spot_id`.

    Comma- or tab-separated (sniffed). Other columns (e.g. `label`, `array_x`) are kept. An ST
    Spot Detector selection table (`x y new_x new_y pixel_x pixel_y selected`, as HER2+'s
    `ST-spotfiles/`) works as it is: selected spots only, ids "{x}x{y}" as in the count tables.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"spots file not found: {path}. Give a CSV with columns pixel_x, pixel_y "
            "(full-resolution pixel centres) and optionally spot_id."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the spots file is empty (0 bytes); give a CSV with a header "
                         "line `spot_id,pixel_x,pixel_y` and one row per spot.")
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error,
            ValueError) as exc:
        raise ValueError(
            f"{path}: cannot parse the spots table ({exc}); give a comma- or tab-separated text "
            "file with columns pixel_x, pixel_y (and optionally spot_id)."
        ) from None
    missing = [c for c in ("pixel_x", "pixel_y") if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: lacks column(s) {missing}; a spots CSV needs pixel_x, pixel_y "
            f"(full-resolution pixel centres) and optionally spot_id. Found: {list(table.columns)}."
        )
    for column in ("pixel_x", "pixel_y"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            rows = list(np.flatnonzero(values.isna().to_numpy())[:5] + 2)
            raise ValueError(f"{path}: column {column} has missing/non-numeric values (lines {rows}).")
        table[column] = values.astype(np.float64)
    if "spot_id" not in table.columns and {"x", "y", "selected"} <= set(table.columns):
        # An ST Spot Detector selection table (HER2+/cSCC `ST-spotfiles/*_selection.tsv`): keep
        # the spots under tissue and name them "{x}x{y}" like the count tables' rows.
        table = table[pd.to_numeric(table["selected"], errors="coerce").fillna(0) > 0].copy()
        table["spot_id"] = (np.rint(table["x"].astype(float)).astype(int).astype(str) + "x"
                            + np.rint(table["y"].astype(float)).astype(int).astype(str))
        table["array_x"] = np.rint(table["x"].astype(float)).astype(int)
        table["array_y"] = np.rint(table["y"].astype(float)).astype(int)
    if len(table) == 0:
        raise ValueError(f"{path}: the spots table has no rows.")
    if "spot_id" in table.columns:
        table["spot_id"] = table["spot_id"].astype(str)
    return table.reset_index(drop=True)


def read_visium_spots(outs_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """In-tissue spots of a Space Ranger `outs/` folder and its scale factors.

    Reads `spatial/tissue_positions.csv` (or the parquet / older `_list.csv`) and
    `spatial/scalefactors_json.json`. Columns: spot_id (barcode), pixel_x (pxl_col_in_fullres),
    pixel_y (pxl_row_in_fullres), array_x (array_col), array_y (array_row).
    """
    from mclstexp_hub.data.readers.visium import read_tissue_positions

    outs = Path(outs_dir)
    if not outs.is_dir():
        raise FileNotFoundError(f"Space Ranger outs/ folder not found: {outs}")
    positions = read_tissue_positions(outs / "spatial")
    positions = positions[positions["in_tissue"].astype(int) == 1]
    if positions.empty:
        raise ValueError(f"{outs}/spatial: no spot is marked in_tissue=1.")
    table = pd.DataFrame(
        {
            "spot_id": positions["barcode"].astype(str).to_numpy(),
            "pixel_x": positions["pxl_col_in_fullres"].to_numpy(dtype=np.float64),
            "pixel_y": positions["pxl_row_in_fullres"].to_numpy(dtype=np.float64),
            "array_x": positions["array_col"].to_numpy(dtype=np.int64),
            "array_y": positions["array_row"].to_numpy(dtype=np.int64),
        }
    )
    scalefactors: dict[str, Any] = {}
    sf_path = outs / "spatial" / "scalefactors_json.json"
    if sf_path.is_file():
        try:
            scalefactors = json.loads(sf_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{sf_path}: invalid JSON ({exc}).") from exc
    return table, scalefactors


__all__ = ["read_spots_csv", "read_visium_spots"]
