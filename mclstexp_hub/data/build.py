"""One call from raw files to a Hub-ready patch dataset: read → preprocess → write."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from ..outputs import check_output, is_dataset_folder
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
    check_data_dir(kind, data_dir)
    if sections:
        repeated = sorted({s for s in sections if list(sections).count(s) > 1})
        if repeated:
            raise DataError(
                f"--sections: {preview(repeated)} given more than once; list each section once"
            )
    if cls.image_from_argument:
        if image is None:
            raise DataError(f"{kind}: pass the full-resolution H&E image with --image")
        if not Path(image).is_file():
            raise FileNotFoundError(
                f"--image {image} not found"
                + (" (it is a folder, not an image file)" if Path(image).is_dir() else "")
                + "; pass the full-resolution H&E image file"
            )
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


def check_data_dir(kind: str, data_dir: Path) -> None:
    """``--data-dir`` exists and is a folder (a file for readers that read one file)."""
    cls = reader_class(kind)
    if not data_dir.exists():
        raise FileNotFoundError(f"--data-dir {data_dir} not found; it must be {cls.layout}")
    if cls.input_is_file and not data_dir.is_file():
        raise DataError(f"--data-dir {data_dir} is a folder; the {kind} reader reads {cls.layout}")
    if not cls.input_is_file and not data_dir.is_dir():
        raise DataError(
            f"--data-dir {data_dir} is a file, not a folder; for {kind} it must be {cls.layout}"
        )


def _positive(value: float | None, option: str, example: str, *, integer: bool = False) -> None:
    """Refuse 0, negative, NaN (and, with ``integer``, fractional) values of ``option``."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        raise DataError(
            f"{option} {value}: must be a positive {'integer' if integer else 'number'} "
            f"(e.g. {option} {example}), or leave the option out for its default"
        )


def check_build_options(
    patch_size: int, target_mpp: float | None, source_mpp: float | None, n_top: int,
    min_spots: int,
) -> None:
    """Every numeric option of a build is used as given or refused here, naming the option."""
    _positive(patch_size, "--patch-size", "224", integer=True)
    _positive(target_mpp, "--target-mpp", "0.5")
    _positive(source_mpp, "--source-mpp", "0.5")
    _positive(n_top, "--n-top", "1000", integer=True)
    if not (isinstance(min_spots, int) and min_spots >= 0):
        raise DataError(
            f"--min-spots {min_spots}: must be an integer ≥ 0 (0 keeps every HVG; e.g. "
            "--min-spots 1000)"
        )


def check_dropped_spots(adatas: Sequence[ad.AnnData], allow: bool) -> None:
    """Refuse sections whose counts and spot positions joined only partially, unless ``allow``.

    The readers record the join in ``metadata["dropped_spots"]``; with ``allow`` the drop is
    kept there and written to the dataset metadata per section.
    """
    lines = []
    for a in adatas:
        section = str(a.obs["section"].iloc[0])
        drop = next(iter(a.uns["spatial"].values()))["metadata"].get("dropped_spots") or {}
        n_spots, n_counts = drop.get("spots_without_counts", 0), drop.get("counts_without_spot", 0)
        if n_spots or n_counts:
            lines.append(
                f"section {section}: {n_spots} spot(s) of {drop.get('spots_file')} have no "
                f"counts row in {drop.get('counts_file')}"
                + (f" (e.g. {preview(drop['examples_spots_without_counts'], 3)})" if n_spots else "")
                + f", {n_counts} counts row(s) have no spot"
                + (f" (e.g. {preview(drop['examples_counts_without_spot'], 3)})" if n_counts else "")
            )
    if lines and not allow:
        raise DataError(
            "counts and spot positions do not match, so spots would be dropped — "
            + "; ".join(lines)
            + ". Fix the files so they describe the same spots, or pass --allow-dropped-spots "
            "to build without them (the drop is recorded in the dataset metadata)"
        )


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
    allow_dropped_spots: bool = False,
    progress: bool = True,
) -> Path:
    """Build ``out`` from raw ``kind`` data; returns the dataset folder.

    ``source_mpp`` overrides every section's recorded image resolution (µm per pixel), which
    ``target_mpp`` resampling needs; readers otherwise estimate it from the spot pitch.
    Spots lost by joining counts to positions fail the build unless ``allow_dropped_spots``.
    """
    check_build_options(patch_size, target_mpp, source_mpp, n_top, min_spots)
    inputs = [data_dir, genes_file, image]
    out = check_output(out, overwrite=overwrite, inputs=inputs, is_ours=is_dataset_folder,
                       what="patch dataset")  # before the slow part
    adatas = read_sections(kind, data_dir, sections, image)
    check_dropped_spots(adatas, allow_dropped_spots)
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
        inputs=[p for p in inputs if p is not None],
    )
