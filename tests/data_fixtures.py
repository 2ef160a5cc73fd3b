"""Writers of small input fixtures in the exact on-disk formats the data readers accept.

No mocks: these produce real files (ST tab-separated tables, a 10x-schema HDF5, Space Ranger
CSV/JSON, JPEG/PNG/pyramidal TIFF images) that the readers parse like real data.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HER2ST_DIR = (SHARED_DATA / "her2st").resolve()
GENE_LISTS = (SHARED_DATA / "gene_lists").resolve()

GENES = ["GENE_A", "GENE_B", "GENE_C", "GENE_D", "GENE_E", "GENE_F"]


def tissue_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB image with structure (so crops at different places differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 7) % 256, (yy * 5) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    noise = rng.integers(0, 20, size=img.shape, dtype=np.uint8)
    return img ^ noise


def grid_spots(nx: int = 4, ny: int = 3, pitch: float = 100.0, offset: float = 150.0):
    """Array and pixel coordinates of an nx × ny spot grid (pixel = offset + pitch · array)."""
    ax, ay = np.meshgrid(np.arange(1, nx + 1), np.arange(1, ny + 1))
    ax, ay = ax.ravel(), ay.ravel()
    return ax, ay, offset + pitch * ax + 0.3, offset + pitch * ay - 0.2


def counts_for(n_spots: int, n_genes: int = len(GENES), seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_spots, n_genes)).astype(np.int64)
    counts[0] = 0  # one spot with zero total, as real sections have
    return counts


def write_st_section(
    folder: Path,
    section: str = "P2_ST_rep1",
    *,
    gsm: str = "GSM0000001",
    image_size: tuple[int, int] = (700, 600),
    image: bool = True,
    gz: bool = False,
    nx: int = 4,
    ny: int = 3,
    counts: np.ndarray | None = None,
    genes: list[str] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """One cSCC section in GEO GSE144240 naming (stdata counts, spot selection, jpg)."""
    folder.mkdir(parents=True, exist_ok=True)
    genes = genes or GENES
    ax, ay, px, py = grid_spots(nx, ny)
    n = len(ax)
    counts = counts if counts is not None else counts_for(n, len(genes), seed + 1)
    index = [f"{x}x{y}" for x, y in zip(ax, ay, strict=True)]
    cnt = pd.DataFrame(counts, index=index, columns=genes)
    spots = pd.DataFrame(
        {
            "x": ax,
            "y": ay,
            "new_x": ax + 0.01,
            "new_y": ay - 0.02,
            "pixel_x": px,
            "pixel_y": py,
            "selected": 1,
        }
    )
    suffix = ".gz" if gz else ""
    paths = {
        "counts": folder / f"{gsm}_{section}_stdata.tsv{suffix}",
        "spots": folder / f"{gsm}_spot_data-selection-{section}.tsv{suffix}",
        "image": folder / f"{gsm}_{section}.jpg",
    }
    opener = gzip.open if gz else open
    with opener(paths["counts"], "wt") as fh:
        cnt.to_csv(fh, sep="\t")
    with opener(paths["spots"], "wt") as fh:
        spots.to_csv(fh, sep="\t", index=False)
    if image:
        w, h = image_size
        Image.fromarray(tissue_image(w, h, seed)).save(paths["image"], quality=95)
    return paths


def write_her2st_section(
    root: Path, section: str = "B1", *, image: bool = True, seed: int = 0
) -> dict[str, Path]:
    """One section in the github.com/almaan/her2st ``data/`` layout (counts, spots, image)."""
    ax, ay, px, py = grid_spots()
    counts = counts_for(len(ax), len(GENES), seed + 1)
    cnt = pd.DataFrame(
        counts, index=[f"{x}x{y}" for x, y in zip(ax, ay, strict=True)], columns=GENES
    )
    spots = pd.DataFrame(
        {"x": ax, "y": ay, "new_x": ax, "new_y": ay, "pixel_x": px, "pixel_y": py, "selected": 1}
    )
    paths = {
        "counts": root / "ST-cnts" / f"{section}.tsv.gz",
        "spots": root / "ST-spotfiles" / f"{section}_selection.tsv",
        "image": root / "ST-imgs" / section[0] / section / f"HE_{section}.jpg",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(paths["counts"], "wt") as fh:
        cnt.to_csv(fh, sep="\t")
    spots.to_csv(paths["spots"], sep="\t", index=False)
    if image:
        Image.fromarray(tissue_image(700, 600, seed)).save(paths["image"], quality=95)
    return paths


def write_10x_h5(
    path: Path,
    counts: np.ndarray,
    barcodes: list[str],
    genes: list[str],
    feature_types: list[str] | None = None,
) -> None:
    """A Cell Ranger ≥ 3 feature-barcode HDF5 (CSC genes × barcodes under /matrix)."""
    import scipy.sparse as sp

    csc = sp.csc_matrix(counts.T.astype(np.int32))  # genes × barcodes; columns = barcodes
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=csc.data.astype(np.int32))
        m.create_dataset("indices", data=csc.indices.astype(np.int64))
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset(
            "id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        )
        feats.create_dataset("name", data=np.array(genes, dtype="S"))
        feats.create_dataset(
            "feature_type",
            data=np.array(feature_types or ["Gene Expression"] * len(genes), dtype="S"),
        )
        feats.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_visium_outs(
    root: Path,
    *,
    positions: str = "new",
    matrix: str = "h5",
    image_format: str = "png",
    image_size: tuple[int, int] = (700, 600),
    nx: int = 4,
    ny: int = 3,
    extra_off_tissue: bool = True,
    seed: int = 3,
) -> dict[str, Path]:
    """A Space Ranger ``outs/`` folder: matrix (h5 or mtx), tissue positions, scalefactors, and a
    full-resolution image outside it (PNG, JPEG or pyramidal TIFF)."""
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    ax, ay, px, py = grid_spots(nx, ny)
    n = len(ax)
    barcodes = [f"AAACGT{i:04d}-1" for i in range(n)]
    counts = counts_for(n, len(GENES), seed)
    if matrix == "h5":
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts, barcodes, GENES)
    else:
        import scipy.io
        import scipy.sparse as sp

        mdir = outs / "filtered_feature_bc_matrix"
        mdir.mkdir()
        with gzip.open(mdir / "matrix.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(fh, sp.coo_matrix(counts.T))
        feats = pd.DataFrame(
            {
                "id": [f"ENSG{i}" for i in range(len(GENES))],
                "name": GENES,
                "type": "Gene Expression",
            }
        )
        feats.to_csv(mdir / "features.tsv.gz", sep="\t", header=False, index=False)
        pd.Series(barcodes).to_csv(mdir / "barcodes.tsv.gz", header=False, index=False)
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": ay,
            "array_col": ax,
            "pxl_row_in_fullres": py,
            "pxl_col_in_fullres": px,
        }
    )
    if extra_off_tissue:  # an off-tissue barcode that is not in the filtered matrix
        pos.loc[len(pos)] = ["TTTTTT0000-1", 0, 0, 0, 5.0, 5.0]
    if positions == "new":
        pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    else:
        pos.to_csv(outs / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps(
            {
                "spot_diameter_fullres": 55.0,  # → 1 µm per pixel
                "tissue_hires_scalef": 0.5,
                "fiducial_diameter_fullres": 80.0,
                "tissue_lowres_scalef": 0.1,
            }
        )
    )
    w, h = image_size
    img = tissue_image(w, h, seed)
    image_path = root / f"fullres.{'tif' if image_format == 'pyramid' else image_format}"
    if image_format == "pyramid":
        write_pyramid_tiff(image_path, img)
    else:
        Image.fromarray(img).save(image_path)
    return {"outs": outs, "image": image_path, "counts": counts, "barcodes": barcodes}


def write_pyramid_tiff(path: Path, img: np.ndarray, mpp: float = 0.5) -> None:
    """A tiled two-level pyramidal TIFF (level 0 = ``img``) that tiffslide reads."""
    import tifffile

    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(
            img,
            tile=(128, 128),
            photometric="rgb",
            subifds=1,
            compression="zlib",
            resolution=res,
            resolutionunit="CENTIMETER",
        )
        tif.write(
            img[::2, ::2].copy(),
            tile=(128, 128),
            photometric="rgb",
            subfiletype=1,
            compression="zlib",
        )
