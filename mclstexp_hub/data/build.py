"""One call from raw files to a Hub-ready patch dataset: read → preprocess → write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from ..presets import get_preset, preset_names
from .errors import DataError, preview
from .hf_dataset import build_patch_dataset
from .preprocess import DEFAULT_TRANSFORM, preprocess_sections, read_gene_panel
from .readers import list_readers, reader_class

KINDS = tuple(list_readers())
"""Reader kinds ``build_dataset`` accepts (the reader registry's)."""


def default_license(kind: str, dataset_name: str | None = None) -> str | None:
    """Licence note for a build: the named paper dataset's (registry), else the reader's."""
    if dataset_name in preset_names():
        return get_preset(dataset_name).license_note
    return reader_class(kind).license_note


def read_sections(
    kind: str,
    data_dir: str | Path,
    sections: Sequence[str] | None = None,
    image: str | Path | None = None,
) -> list[ad.AnnData]:
    """Sections with images for a patch dataset, read by the ``kind`` reader.

    Without ``sections``, every section that has an image; a requested section without one is
    an error (it cannot give patches). Readers whose image is not inside ``data_dir``
    (Visium, h5ad) need ``image``.
    """
    data_dir = Path(data_dir)
    cls = reader_class(kind)
    if cls.image_from_argument:
        if image is None:
            raise DataError(f"{kind}: pass the full-resolution H&E image with --image")
        reader = cls(image=image)
    else:
        if image is not None:
            takes_image = [k for k in KINDS if reader_class(k).image_from_argument]
            raise DataError(
                f"{kind}: --image is only for {takes_image}; the {kind} reader finds each "
                "section's image in --data-dir — drop --image"
            )
        reader = cls()
    names = list(sections) if sections else reader.list_sections(data_dir, with_images_only=True)
    if not names:
        raise DataError(
            f"{data_dir}: no {kind} section has a full-resolution image; nothing to build "
            f"(--data-dir must be {reader.layout})"
        )
    adatas = reader.read(data_dir, names)
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
        license=license or default_license(kind, dataset_name or kind),
        overwrite=overwrite,
        progress=progress,
    )
