"""10x Genomics Visium sections from a Space Ranger ``outs/`` folder.

Reads ``filtered_feature_bc_matrix.h5`` (or the ``filtered_feature_bc_matrix/`` mtx folder),
``spatial/tissue_positions.csv`` (Space Ranger ≥ 2.0, with header), ``tissue_positions.parquet``
or ``spatial/tissue_positions_list.csv`` (older, no header), and
``spatial/scalefactors_json.json``. Spot centres stay in full-resolution pixels
(``pxl_col_in_fullres`` → ``pixel_x``, ``pxl_row_in_fullres`` → ``pixel_y``); the hires/lowres
PNGs are never used for patches, so the full-resolution image is passed explicitly.

``array_x`` = ``array_col`` and ``array_y`` = ``array_row`` (the integer grid used for the
position embeddings). Microns per pixel is estimated as 55 µm / ``spot_diameter_fullres``
unless given.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, preview
from ._section import make_section

SOURCE = "10x Genomics Visium (Space Ranger outs/)"
VISIUM_SPOT_DIAMETER_UM = 55.0
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_10x_h5(path: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(barcodes × genes CSR counts, barcodes, gene symbols) from a 10x feature-barcode HDF5.

    Supports the Cell Ranger ≥ 3 schema (``/matrix`` with ``features/``; only "Gene
    Expression" features are kept) and the v2 schema (``/{genome}`` with ``gene_names``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"10x matrix not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:
                grp = f["matrix"]
                names = _decode(grp["features/name"][:])
                ftype = (
                    _decode(grp["features/feature_type"][:])
                    if "feature_type" in grp["features"]
                    else ["Gene Expression"] * len(names)
                )
            else:
                genomes = list(f.keys())
                if not genomes:
                    raise DataError(
                        f"{path}: empty HDF5 file; expected a 10x feature-barcode matrix"
                    )
                grp = f[genomes[0]]
                names = _decode(grp["gene_names"][:])
                ftype = ["Gene Expression"] * len(names)
            n_genes, n_barcodes = (int(v) for v in grp["shape"][:])
            matrix = sp.csr_matrix(
                (grp["data"][:], grp["indices"][:], grp["indptr"][:]), shape=(n_barcodes, n_genes)
            )
            barcodes = _decode(grp["barcodes"][:])
    except KeyError as exc:
        raise DataError(
            f"{path}: not a 10x feature-barcode matrix (missing dataset {exc}); pass "
            "Space Ranger's filtered_feature_bc_matrix.h5"
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: unreadable HDF5 file ({exc}); is it complete?") from exc
    keep = np.array([t == "Gene Expression" for t in ftype])
    if not keep.any():
        raise DataError(f"{path}: no 'Gene Expression' features in the matrix")
    matrix = matrix[:, keep]
    genes = [n for n, k in zip(names, keep, strict=True) if k]
    return matrix.tocsr(), barcodes, genes


def read_10x_mtx(folder: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(barcodes × genes CSR, barcodes, gene symbols) from a ``filtered_feature_bc_matrix/``."""
    import scipy.io

    folder = Path(folder)

    def pick(*names: str) -> Path:
        for n in names:
            if (folder / n).is_file():
                return folder / n
        raise FileNotFoundError(f"{folder}: none of {names} found (10x mtx folder)")

    mtx = pick("matrix.mtx.gz", "matrix.mtx")
    feats = pick("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
    bcs = pick("barcodes.tsv.gz", "barcodes.tsv")
    try:
        matrix = sp.csr_matrix(scipy.io.mmread(mtx).T)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{mtx}: unreadable Matrix Market file ({exc})") from exc
    features = pd.read_csv(feats, sep="\t", header=None)
    barcodes = pd.read_csv(bcs, sep="\t", header=None)[0].astype(str).tolist()
    genes = features[1 if features.shape[1] > 1 else 0].astype(str).tolist()
    if features.shape[1] > 2:
        keep = (features[2] == "Gene Expression").to_numpy()
        matrix, genes = matrix[:, keep], [g for g, k in zip(genes, keep, strict=True) if k]
    if matrix.shape != (len(barcodes), len(genes)):
        raise DataError(f"{folder}: matrix shape {matrix.shape} does not match its tsv files")
    return matrix.tocsr(), barcodes, genes


def read_tissue_positions(spatial_dir: str | Path) -> pd.DataFrame:
    """Spot table indexed by barcode from whichever tissue-positions file Space Ranger wrote."""
    spatial_dir = Path(spatial_dir)
    new_csv = spatial_dir / "tissue_positions.csv"
    parquet = spatial_dir / "tissue_positions.parquet"
    old_csv = spatial_dir / "tissue_positions_list.csv"
    if new_csv.is_file():
        path, df = new_csv, pd.read_csv(new_csv)
    elif parquet.is_file():
        path, df = parquet, pd.read_parquet(parquet)
    elif old_csv.is_file():
        path, df = old_csv, pd.read_csv(old_csv, header=None)
        if df.shape[1] != 6:
            raise DataError(f"{old_csv}: expected 6 columns without header, got {df.shape[1]}")
        df.columns = POSITION_COLUMNS
    else:
        raise FileNotFoundError(
            f"tissue positions not found in {spatial_dir}: expected tissue_positions.csv "
            "(Space Ranger ≥ 2.0), tissue_positions.parquet or tissue_positions_list.csv"
        )
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: lacks column(s) {missing}; expected {POSITION_COLUMNS}")
    df["barcode"] = df["barcode"].astype(str)
    dup = df["barcode"][df["barcode"].duplicated()].unique()
    if len(dup):
        raise DataError(f"{path}: duplicate barcode(s) {preview(dup)}")
    df.attrs["path"] = str(path)
    return df.set_index("barcode", drop=False)


def read_visium(
    outs_dir: str | Path,
    image_path: str | Path | None,
    section: str | None = None,
    *,
    patient: str | None = None,
    microns_per_pixel: float | None = None,
    labels: pd.Series | None = None,
) -> ad.AnnData:
    """One Visium section from Space Ranger ``outs/`` and its full-resolution image.

    ``section`` defaults to the name of the folder holding ``outs/`` (or of ``outs_dir``);
    ``patient`` defaults to the section. ``labels`` (indexed by barcode) fills ``obs["label"]``.
    Only in-tissue spots present in the filtered matrix are kept.
    """
    outs = Path(outs_dir)
    if not outs.is_dir():
        raise FileNotFoundError(f"Space Ranger outs/ folder not found: {outs}")
    h5 = outs / "filtered_feature_bc_matrix.h5"
    mtx_dir = outs / "filtered_feature_bc_matrix"
    if h5.is_file():
        matrix, barcodes, genes = read_10x_h5(h5)
        mpath = h5
    elif mtx_dir.is_dir():
        matrix, barcodes, genes = read_10x_mtx(mtx_dir)
        mpath = mtx_dir
    else:
        raise FileNotFoundError(
            f"{outs}: neither filtered_feature_bc_matrix.h5 nor filtered_feature_bc_matrix/ found"
        )
    if len(set(barcodes)) != len(barcodes):
        dup = pd.Index(barcodes)[pd.Index(barcodes).duplicated()].unique()
        raise DataError(f"{mpath}: duplicate barcode(s) {preview(dup)}")
    positions = read_tissue_positions(outs / "spatial")
    pos_path = positions.attrs["path"]
    positions = positions[positions["in_tissue"].astype(int) == 1]
    order = [i for i, b in enumerate(barcodes) if b in positions.index]
    if not order:
        raise DataError(
            f"{mpath} + {pos_path}: no barcode of the matrix is an in-tissue spot of the "
            "positions file; they are not from the same Space Ranger run"
        )
    kept = [barcodes[i] for i in order]
    spots = positions.loc[kept]
    spots = pd.DataFrame(
        {
            "spot_id": kept,
            "array_x": spots["array_col"].to_numpy(),
            "array_y": spots["array_row"].to_numpy(),
            "pixel_x": spots["pxl_col_in_fullres"].to_numpy(dtype=float),
            "pixel_y": spots["pxl_row_in_fullres"].to_numpy(dtype=float),
            "label": labels.reindex(kept).fillna("").astype(str).to_numpy()
            if labels is not None
            else "",
        }
    )
    scalefactors: dict = {}
    sf_path = outs / "spatial" / "scalefactors_json.json"
    if sf_path.is_file():
        try:
            scalefactors = json.loads(sf_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{sf_path}: invalid JSON ({exc})") from exc
    mpp_source = "given" if microns_per_pixel else None
    if microns_per_pixel is None and scalefactors.get("spot_diameter_fullres"):
        microns_per_pixel = VISIUM_SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"])
        mpp_source = "estimated as 55 µm / spot_diameter_fullres (scalefactors_json.json)"
    if section is None:
        section = outs.parent.name if outs.name == "outs" else outs.name
    if image_path is not None and not Path(image_path).is_file():
        raise FileNotFoundError(
            f"full-resolution image not found: {image_path}; pass the H&E image given to "
            "Space Ranger (--image), not the hires PNG"
        )
    return make_section(
        matrix[order],
        genes,
        spots,
        section=section,
        patient=patient or section,
        source=SOURCE,
        where=f"{mpath} + {pos_path}",
        image_path=image_path,
        microns_per_pixel=microns_per_pixel,
        mpp_source=mpp_source,
        scalefactors=scalefactors,
        extra_metadata={"outs_dir": str(outs), "has_image": image_path is not None},
    )
