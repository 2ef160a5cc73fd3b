"""One call from raw files to a Hub-ready patch dataset: read → preprocess → write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from .errors import DataError, preview
from .hf_dataset import build_patch_dataset
from .preprocess import DEFAULT_TRANSFORM, preprocess_sections, read_gene_panel
from .readers import cscc, her2st
from .readers.h5ad import read_h5ad
from .readers.visium import read_visium

KINDS = ("her2st", "cscc", "visium", "h5ad")
LICENSES = {
    "her2st": her2st.LICENSE_NOTE,
    "cscc": cscc.LICENSE_NOTE,
}


def read_sections(
    kind: str,
    data_dir: str | Path,
    sections: Sequence[str] | None = None,
    image: str | Path | None = None,
) -> list[ad.AnnData]:
    """Sections with images for a patch dataset. HER2+/cSCC default to every imaged section;
    a requested section without an image is an error (it cannot give patches)."""
    data_dir = Path(data_dir)
    if kind == "her2st":
        names = list(sections) if sections else her2st.list_her2st_sections(data_dir, True)
        if not names:
            raise DataError(f"{data_dir}/ST-imgs: no section has an image; nothing to build")
        adatas = her2st.read_her2st(data_dir, names)
    elif kind == "cscc":
        names = list(sections) if sections else cscc.list_cscc_sections(data_dir)
        adatas = [cscc.read_cscc_section(data_dir, s, require_image=True) for s in names]
    elif kind in ("visium", "h5ad"):
        if image is None:
            raise DataError(f"{kind}: pass the full-resolution H&E image with --image")
        if sections and len(sections) > 1:
            raise DataError(f"{kind}: one section per build (--sections takes one name here)")
        name = sections[0] if sections else None
        if kind == "visium":
            adatas = [read_visium(data_dir, image, section=name)]
        else:
            adatas = [read_h5ad(data_dir, image, section=name)]
    else:
        raise DataError(f"unknown data kind {kind!r}; choose one of {KINDS}")
    no_image = [
        str(a.obs["section"].iloc[0])
        for a in adatas
        if not next(iter(a.uns["spatial"].values()))["metadata"].get("image_path")
    ]
    if no_image:
        raise DataError(
            f"section(s) {preview(no_image)} have no full-resolution image under {data_dir}, so "
            "no patches can be cut; leave them out of --sections"
        )
    return adatas


def build_dataset(
    kind: str,
    data_dir: str | Path,
    out: str | Path,
    *,
    sections: Sequence[str] | None = None,
    genes_file: str | Path | None = None,
    transform: str = DEFAULT_TRANSFORM,
    fill_missing: bool = False,
    patch_size: int = 224,
    target_mpp: float | None = None,
    source_mpp: float | None = None,
    image: str | Path | None = None,
    overwrite: bool = False,
    dataset_name: str | None = None,
    license: str | None = None,
    n_top: int = 1000,
    min_spots: int = 1000,
    flavor: str = "seurat",
    progress: bool = True,
) -> Path:
    """Build ``out`` from raw ``kind`` data; returns the dataset folder.

    ``source_mpp`` overrides every section's recorded image resolution (µm per pixel), which
    ``target_mpp`` resampling needs; readers otherwise estimate it from the spot pitch.
    """
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the slow part
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    adatas = read_sections(kind, data_dir, sections, image)
    if source_mpp is not None:  # the user knows the scan resolution better than an estimate
        for a in adatas:
            md = next(iter(a.uns["spatial"].values()))["metadata"]
            md["microns_per_pixel"], md["microns_per_pixel_source"] = float(source_mpp), "given"
    genes = read_gene_panel(genes_file) if genes_file else None
    processed = preprocess_sections(
        adatas,
        genes,
        transform,
        fill_missing,
        gene_panel_source=f"gene panel file {Path(genes_file).name}" if genes_file else None,
        n_top=n_top,
        min_spots=min_spots,
        flavor=flavor,
    )
    return build_patch_dataset(
        processed,
        out,
        dataset_name or kind,
        patch_size,
        target_mpp=target_mpp,
        license=license or LICENSES.get(kind),
        overwrite=overwrite,
        progress=progress,
    )
