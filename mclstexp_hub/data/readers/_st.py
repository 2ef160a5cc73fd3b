"""Legacy Spatial Transcriptomics (ST, 100 µm spots) sections: counts + ST Spot Detector table.

Both HER2+ (Andersson et al. 2021) and cSCC (Ji et al. 2020, GEO GSE144240) ship the same two
tables per section:

* counts — spots × genes, tab-separated, row index ``"{x}x{y}"`` (array coordinates);
* spots — the ST Spot Detector selection ``x y new_x new_y pixel_x pixel_y selected``, where
  ``x``/``y`` are array coordinates and ``pixel_*`` are centres in full-resolution pixels.

They are joined by rounding ``x``/``y`` to integers and matching ``"{x}x{y}"`` (inner join),
as the published reference code does.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import DataError, preview
from ._section import dropped_spots, estimate_mpp_from_pitch, make_section

ST_PITCH_UM = 200.0
"""Centre-to-centre distance of neighbouring spots on a legacy ST array (100 µm spots)."""

SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def read_st_table(path: Path, what: str, **read_csv: Any) -> pd.DataFrame:
    """A tab-separated table (plain or gzip); every way it can be unreadable is a DataError
    naming ``path`` and ``what`` it is (the one reader of the ST tables)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the {what} is empty (0 bytes); re-download or re-export it")
    try:
        return pd.read_csv(path, sep="\t", **read_csv)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the {what} holds no table (no header row); re-download or re-export it"
        ) from None
    except (OSError, EOFError, zlib.error, pd.errors.ParserError, UnicodeDecodeError,
            ValueError) as exc:
        raise DataError(
            f"{path}: cannot parse the {what} as a tab-separated table ({type(exc).__name__}: "
            f"{exc}); is the file complete and not binary? Re-download or re-export it"
        ) from None


def read_st_counts(path: Path) -> pd.DataFrame:
    """Spots × genes count table with the ``"{x}x{y}"`` index."""
    df = read_st_table(path, "counts table", index_col=0)
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise DataError(f"{path}: counts table is empty (expected spots × genes, tab-separated)")
    df.index = df.index.astype(str)
    dup = df.index[df.index.duplicated()].unique()
    if len(dup):
        raise DataError(f"{path}: duplicate spot(s) {preview(dup)} in the counts index")
    non_numeric = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        raise DataError(
            f"{path}: non-numeric count column(s) {preview(non_numeric)}; expected raw counts"
        )
    return df


def _numeric_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``df[column]`` as float; a value that is present but not a number names file + column."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        examples = preview(df[column][bad].astype(str).unique(), 3)
        raise DataError(
            f"{path}: column {column!r} has {int(bad.sum())} non-numeric value(s) ({examples}); "
            "it must hold numbers — fix those rows or re-export the spot table"
        )
    return values.astype(float)


def _read_spot_table(path: Path) -> tuple[pd.DataFrame, set[str]]:
    """Selected spots keyed by the rounded ``"{x}x{y}"`` id, and the ids of deselected rows."""
    df = read_st_table(path, "spot table")
    missing = [c for c in SPOT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: spot table lacks column(s) {missing}; expected the ST Spot Detector "
            "columns 'x y new_x new_y pixel_x pixel_y selected'"
        )
    df = df.copy()
    for column in (*SPOT_COLUMNS, *(["selected"] if "selected" in df.columns else [])):
        df[column] = _numeric_column(df, column, path)
    deselected: set[str] = set()
    if "selected" in df.columns:
        chosen = df["selected"] > 0
        if not chosen.any():
            raise DataError(
                f"{path}: no spot is selected (column 'selected' is 0 in all {len(df)} rows); "
                "select the spots under the tissue in the ST Spot Detector and export again"
            )
        off = df[~chosen].dropna(subset=["x", "y"])
        deselected = set(
            np.rint(off["x"]).astype(int).astype(str) + "x" + np.rint(off["y"]).astype(int).astype(str)
        )
        df = df[chosen]
    if df[["x", "y"]].isna().any().any():
        raise DataError(f"{path}: some spots have no x/y array coordinate")
    for column in ("pixel_x", "pixel_y"):
        if df[column].isna().any():
            raise DataError(
                f"{path}: column {column!r} is empty in {int(df[column].isna().sum())} selected "
                "row(s); every selected spot needs its pixel centre"
            )
    df["array_x"] = np.rint(df["x"]).astype(int)
    df["array_y"] = np.rint(df["y"]).astype(int)
    df["spot_id"] = df["array_x"].astype(str) + "x" + df["array_y"].astype(str)
    dup = df["spot_id"][df["spot_id"].duplicated()].unique()
    if len(dup):
        raise DataError(
            f"{path}: duplicate spot(s) {preview(dup)} after rounding x/y; each array position "
            "must appear once — remove the repeated rows"
        )
    return df.set_index("spot_id", drop=False), deselected - set(df["spot_id"])


def read_st_spots(path: Path) -> pd.DataFrame:
    """ST Spot Detector selection table (selected rows), keyed by the rounded ``"{x}x{y}"`` id."""
    return _read_spot_table(path)[0]


def read_st_labels(path: Path) -> pd.Series:
    """Pathologist labels keyed by ``"{x}x{y}"`` (rounded ``x``/``y`` of the label table)."""
    df = read_st_table(path, "label table")
    missing = [c for c in ("x", "y", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: label table lacks column(s) {missing}")
    df = df.dropna(subset=["x", "y"])
    key = (
        np.rint(df["x"].astype(float)).astype(int).astype(str)
        + "x"
        + np.rint(df["y"].astype(float)).astype(int).astype(str)
    )
    labels = pd.Series(df["label"].fillna("").astype(str).to_numpy(), index=key.to_numpy())
    return labels[~labels.index.duplicated(keep="first")]


def read_st_section(
    counts_path: Path,
    spots_path: Path,
    *,
    section: str,
    patient: str,
    source: str,
    image_path: Path | None,
    labels_path: Path | None = None,
) -> ad.AnnData:
    """Join one ST section's counts and spots into a validated AnnData."""
    counts = read_st_counts(counts_path)
    spots, deselected = _read_spot_table(spots_path)
    shared = spots.index[spots.index.isin(counts.index)]
    where = f"{counts_path} + {spots_path}"
    no_counts = spots.index[~spots.index.isin(counts.index)]
    orphan = counts.index[~counts.index.isin(spots.index) & ~counts.index.isin(deselected)]
    if len(shared) == 0:
        raise DataError(
            f"{where}: no spot of the spot table matches the counts index (spot ids like "
            f"{preview(spots.index[:3])} vs counts {preview(counts.index[:3])}); the files do "
            "not describe the same section or the counts index is not '{x}x{y}'"
        )
    spots = spots.loc[shared]
    if labels_path is not None:
        labels = read_st_labels(labels_path)
        spots["label"] = labels.reindex(spots.index).fillna("").to_numpy()
    matrix = counts.loc[shared].to_numpy(dtype=np.float32)
    mpp = estimate_mpp_from_pitch(
        spots[["array_x", "array_y"]].to_numpy(),
        spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float),
        ST_PITCH_UM,
    )
    return make_section(
        matrix,
        list(counts.columns),
        spots,
        section=section,
        patient=patient,
        source=source,
        where=where,
        image_path=image_path,
        microns_per_pixel=mpp if image_path is not None else None,
        mpp_source=(
            f"estimated from the spot pitch ({ST_PITCH_UM:.0f} µm between neighbouring ST spots)"
            if image_path is not None
            else None
        ),
        scalefactors={"spot_diameter_fullres": 100.0 / mpp} if mpp else {},
        extra_metadata={
            "counts_path": str(counts_path),
            "spots_path": str(spots_path),
            "labels_path": str(labels_path) if labels_path else None,
            "has_image": image_path is not None,
            "dropped_spots": dropped_spots(
                [str(i) for i in no_counts], [str(i) for i in orphan],
                spots_file=spots_path.name, counts_file=counts_path.name,
            ),
        },
    )
