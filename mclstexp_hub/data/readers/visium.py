"""10x Genomics Visium sections from a Space Ranger ``outs/`` folder.

Reads ``filtered_feature_bc_matrix.h5`` (or the ``filtered_feature_bc_matrix/`` mtx folder),
``spatial/tissue_positions.csv`` (Space Ranger ≥ 2.0, with header), ``tissue_positions.parquet``
or ``spatial/tissue_positions_list.csv`` (older, no header), and
``spatial/scalefactors_json.json``. Spot centres stay in full-resolution pixels
(``pxl_col_in_fullres`` → ``pixel_x``, ``pxl_row_in_fullres`` → ``pixel_y``); the hires/lowres
PNGs are never used for patches, so the full-resolution image is passed explicitly.

``array_x`` = ``array_col`` and ``array_y`` = ``array_row`` (the integer grid used for the
position embeddings). Microns per pixel is estimated as 55 µm / ``spot_diameter_fullres``
unless given. ``VisiumReader`` holds the logic; ``read_visium`` is the entry point kept for
existing callers. The 10x matrix files are parsed by scanpy (imported on first use).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, preview
from .base import SectionReader, register_reader

if TYPE_CHECKING:  # heavy at import time: loaded on first read (keeps `mclstexp --help` fast)
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

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


def _counts_from_scanpy(
    adata: ad.AnnData, where: Path
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(CSR counts, barcodes, gene symbols) of a scanpy-read 10x matrix, in file order."""
    import scipy.sparse as sp

    if adata.n_vars == 0:
        raise DataError(
            f"{where}: no 'Gene Expression' features in the matrix; pass Space Ranger's "
            "gene-expression filtered_feature_bc_matrix"
        )
    return (
        sp.csr_matrix(adata.X),
        [str(b) for b in adata.obs_names],
        [str(g) for g in adata.var_names],
    )


@contextlib.contextmanager
def _repeated_symbols_expected() -> Iterator[None]:
    """Silence anndata's "names are not unique" warning: ``make_section`` makes them unique."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        yield


def read_10x_h5(path: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(barcodes × genes CSR counts, barcodes, gene symbols) from a 10x feature-barcode HDF5.

    Parsed by ``scanpy.read_10x_h5`` (Cell Ranger ≥ 3 ``/matrix`` schema, only "Gene
    Expression" features kept, or the v2 ``/{genome}`` schema with a single genome); gene
    symbols are returned as stored — ``make_section`` makes repeats unique.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"10x matrix not found: {path}")
    import scanpy as sc  # slow to import: only when a 10x file is actually read

    try:
        with _repeated_symbols_expected():
            adata = sc.read_10x_h5(path)
    except OSError as exc:
        raise DataError(f"{path}: unreadable HDF5 file ({exc}); is it complete?") from exc
    except ValueError as exc:  # several genomes in a v2 file, or no features group
        raise DataError(
            f"{path}: {exc}; pass a single-genome Space Ranger filtered_feature_bc_matrix.h5"
        ) from exc
    except (KeyError, IndexError) as exc:
        raise _not_a_10x_h5(path, exc) from exc
    except Exception as exc:  # scanpy re-raises a missing dataset's KeyError as Exception
        if isinstance(exc.__cause__, KeyError):
            raise _not_a_10x_h5(path, exc.__cause__) from exc
        raise
    return _counts_from_scanpy(adata, path)


def _not_a_10x_h5(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"{path}: not a 10x feature-barcode matrix (missing dataset or group {exc}); pass "
        "Space Ranger's filtered_feature_bc_matrix.h5"
    )


MTX_LAYOUTS = {
    "Cell Ranger ≥ 3": ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"),
    "Cell Ranger 2": ("matrix.mtx", "genes.tsv", "barcodes.tsv"),
}
"""The file sets ``scanpy.read_10x_mtx`` reads (it picks the layout by ``genes.tsv``)."""


def read_10x_mtx(folder: str | Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(barcodes × genes CSR, barcodes, gene symbols) from a ``filtered_feature_bc_matrix/``.

    Parsed by ``scanpy.read_10x_mtx`` (only "Gene Expression" features kept); the folder must
    hold one of ``MTX_LAYOUTS`` complete.
    """
    folder = Path(folder)
    complete = [
        name for name, files in MTX_LAYOUTS.items() if all((folder / f).is_file() for f in files)
    ]
    if not complete:
        expected = "; ".join(f"{k}: {', '.join(v)}" for k, v in MTX_LAYOUTS.items())
        raise FileNotFoundError(
            f"{folder}: not a complete 10x mtx folder; expected {expected} (gzip uncompressed "
            "Cell Ranger ≥ 3 files with `gzip matrix.mtx features.tsv barcodes.tsv`)"
        )
    import scanpy as sc  # slow to import: only when a 10x folder is actually read

    try:
        with _repeated_symbols_expected():
            adata = sc.read_10x_mtx(folder, var_names="gene_symbols", make_unique=False)
    except (ValueError, OSError, EOFError, IndexError, KeyError) as exc:
        raise DataError(
            f"{folder}: unreadable 10x mtx folder ({type(exc).__name__}: {exc}); the matrix "
            "and its tsv files must come from the same Space Ranger run"
        ) from exc
    return _counts_from_scanpy(adata, folder)


def read_tissue_positions(spatial_dir: str | Path) -> pd.DataFrame:
    """Spot table indexed by barcode from whichever tissue-positions file Space Ranger wrote."""
    import pandas as pd

    spatial_dir = Path(spatial_dir)
    new_csv = spatial_dir / "tissue_positions.csv"
    parquet = spatial_dir / "tissue_positions.parquet"
    old_csv = spatial_dir / "tissue_positions_list.csv"
    if not (new_csv.is_file() or parquet.is_file() or old_csv.is_file()):
        raise FileNotFoundError(
            f"tissue positions not found in {spatial_dir}: expected tissue_positions.csv "
            "(Space Ranger ≥ 2.0), tissue_positions.parquet or tissue_positions_list.csv"
        )
    path = new_csv if new_csv.is_file() else parquet if parquet.is_file() else old_csv
    try:
        if path is parquet:
            df = pd.read_parquet(parquet)
        else:
            df = pd.read_csv(path, header=None if path is old_csv else "infer")
    except (OSError, EOFError, ValueError) as exc:  # parser, empty, arrow and decode errors
        raise DataError(
            f"{path}: cannot read the tissue positions ({type(exc).__name__}: {exc}); is the "
            "file complete? Copy it again from Space Ranger's outs/spatial/"
        ) from None
    if path is old_csv:
        if df.shape[1] != 6:
            raise DataError(f"{old_csv}: expected 6 columns without header, got {df.shape[1]}")
        df.columns = POSITION_COLUMNS
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: lacks column(s) {missing}; expected {POSITION_COLUMNS}")
    for column in POSITION_COLUMNS[1:]:
        values = pd.to_numeric(df[column], errors="coerce")
        if values.isna().any():
            raise DataError(
                f"{path}: column {column!r} has {int(values.isna().sum())} missing or non-numeric "
                "value(s); tissue positions must be numbers — copy the file again from Space "
                "Ranger's outs/spatial/"
            )
        df[column] = values
    df["barcode"] = df["barcode"].astype(str)
    dup = df["barcode"][df["barcode"].duplicated()].unique()
    if len(dup):
        raise DataError(f"{path}: duplicate barcode(s) {preview(dup)}")
    df.attrs["path"] = str(path)
    return df.set_index("barcode", drop=False)


@register_reader
class VisiumReader(SectionReader):
    """One Visium section from Space Ranger ``outs/`` and its full-resolution image.

    image: the H&E image given to Space Ranger (``--image``); None reads expression only.
    patient: defaults to the section. microns_per_pixel: overrides the scalefactors estimate.
    labels: per-barcode labels for ``obs["label"]``.
    """

    name = "visium"
    layout = "a Space Ranger outs/ folder (filtered_feature_bc_matrix[.h5], spatial/)"
    image_from_argument = True
    one_section_per_input = True

    def __init__(
        self,
        image: str | Path | None = None,
        *,
        patient: str | None = None,
        microns_per_pixel: float | None = None,
        labels: pd.Series | None = None,
    ) -> None:
        self.image = image
        self.patient = patient
        self.microns_per_pixel = microns_per_pixel
        self.labels = labels

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """The one section: named after the folder holding ``outs/`` (or ``outs_dir`` itself)."""
        outs = Path(data_dir)
        if with_images_only and self.image is None:
            return []
        return [outs.parent.name if outs.name == "outs" else outs.name]

    def read_section(self, data_dir: str | Path, section: str) -> ad.AnnData:
        """The in-tissue spots present in the filtered matrix, named ``section``."""
        import pandas as pd

        from ._section import dropped_spots, make_section

        outs = Path(data_dir)
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
                f"{outs}: neither filtered_feature_bc_matrix.h5 nor filtered_feature_bc_matrix/ "
                "found; --data-dir must be Space Ranger's outs/ folder"
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
        in_matrix = set(barcodes)
        no_counts = [b for b in positions.index if b not in in_matrix]
        kept_set = set(kept)
        orphan = [b for b in barcodes if b not in kept_set]
        spots = positions.loc[kept]
        labels = self.labels
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
        microns_per_pixel = self.microns_per_pixel
        mpp_source = "given" if microns_per_pixel else None
        if microns_per_pixel is None and scalefactors.get("spot_diameter_fullres"):
            microns_per_pixel = VISIUM_SPOT_DIAMETER_UM / float(
                scalefactors["spot_diameter_fullres"]
            )
            mpp_source = "estimated as 55 µm / spot_diameter_fullres (scalefactors_json.json)"
        image_path = self.image
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
            patient=self.patient or section,
            source=SOURCE,
            where=f"{mpath} + {pos_path}",
            image_path=image_path,
            microns_per_pixel=microns_per_pixel,
            mpp_source=mpp_source,
            scalefactors=scalefactors,
            extra_metadata={
                "outs_dir": str(outs),
                "has_image": image_path is not None,
                "dropped_spots": dropped_spots(
                    no_counts, orphan, spots_file=Path(pos_path).name, counts_file=mpath.name
                ),
            },
        )


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
    reader = VisiumReader(
        image_path, patient=patient, microns_per_pixel=microns_per_pixel, labels=labels
    )
    return reader.read_section(outs_dir, section or reader.list_sections(outs_dir)[0])
