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

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import DataError, preview
from ._section import estimate_mpp_from_pitch, make_section

ST_PITCH_UM = 200.0
"""Centre-to-centre distance of neighbouring spots on a legacy ST array (100 µm spots)."""

SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def read_st_counts(path: Path) -> pd.DataFrame:
    """Spots × genes count table with the ``"{x}x{y}"`` index."""
    if not path.is_file():
        raise FileNotFoundError(f"counts table not found: {path}")
    try:
        df = pd.read_csv(path, sep="\t", index_col=0)
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot parse counts table ({exc}); is the file complete?"
        ) from exc
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


def read_st_spots(path: Path) -> pd.DataFrame:
    """ST Spot Detector selection table, keyed by the rounded ``"{x}x{y}"`` id."""
    if not path.is_file():
        raise FileNotFoundError(f"spot table not found: {path}")
    try:
        df = pd.read_csv(path, sep="\t")
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse spot table ({exc})") from exc
    missing = [c for c in SPOT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: spot table lacks column(s) {missing}; expected the ST Spot Detector "
            "columns 'x y new_x new_y pixel_x pixel_y selected'"
        )
    if "selected" in df.columns:
        df = df[df["selected"].astype(float) > 0]
    if df[["x", "y"]].isna().any().any():
        raise DataError(f"{path}: some spots have no x/y array coordinate")
    df = df.copy()
    df["array_x"] = np.rint(df["x"].astype(float)).astype(int)
    df["array_y"] = np.rint(df["y"].astype(float)).astype(int)
    df["spot_id"] = df["array_x"].astype(str) + "x" + df["array_y"].astype(str)
    dup = df["spot_id"][df["spot_id"].duplicated()].unique()
    if len(dup):
        raise DataError(
            f"{path}: duplicate spot(s) {preview(dup)} after rounding x/y; each array position "
            "must appear once — remove the repeated rows"
        )
    return df.set_index("spot_id", drop=False)


def read_st_labels(path: Path) -> pd.Series:
    """Pathologist labels keyed by ``"{x}x{y}"`` (rounded ``x``/``y`` of the label table)."""
    try:
        df = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse label table ({exc})") from exc
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
    spots = read_st_spots(spots_path)
    shared = spots.index[spots.index.isin(counts.index)]
    where = f"{counts_path} + {spots_path}"
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
        },
    )
