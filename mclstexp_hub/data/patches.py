"""Square H&E patches centred on spots, cut from the full-resolution image.

A patch is ``patch_size`` × ``patch_size`` pixels (224 = one ST spot diameter in the paper)
around ``obsm["spatial"]``. With ``target_mpp`` the window covers ``patch_size · target_mpp``
µm of tissue and is resampled (PIL Lanczos) to ``patch_size`` pixels, so sections scanned at
different resolutions give patches of the same physical size.

Spots near the border get the missing part filled with ``slide.PAD_VALUE`` (white). A spot
whose *centre* lies outside the image is an error that lists the spot ids: its coordinates do
not belong to this image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image

from .errors import DataError, preview
from ..models.mclstexp.slide_io_mclstexp import Slide, open_slide


def spot_centers(adata: ad.AnnData) -> np.ndarray:
    """(n, 2) float full-resolution pixel (x, y) spot centres from ``obsm["spatial"]``."""
    if "spatial" not in adata.obsm:
        raise DataError("AnnData lacks obsm['spatial'] (full-resolution pixel x, y of each spot)")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    if not np.isfinite(xy).all():
        raise DataError(
            f"obsm['spatial'] has NaN for spot(s) {preview(adata.obs_names[~np.isfinite(xy).all(1)])}"
        )
    return xy


def check_spots_inside(adata: ad.AnnData, slide: Slide) -> None:
    """Raise ValueError listing the spots whose centre lies outside the image."""
    xy = spot_centers(adata)
    inside = (
        (xy[:, 0] >= 0) & (xy[:, 0] < slide.width) & (xy[:, 1] >= 0) & (xy[:, 1] < slide.height)
    )
    if not inside.all():
        bad = list(adata.obs_names[~inside])
        raise DataError(
            f"{slide.path}: {len(bad)} spot centre(s) lie outside the {slide.width}×{slide.height} "
            f"image: {preview(bad, 20)}. The spot coordinates must be full-resolution pixels of "
            "this image (not hires/lowres PNG pixels); check the image/coordinate pairing"
        )


def window_size(patch_size: int, target_mpp: float | None, source_mpp: float | None) -> int:
    """Full-resolution window edge in pixels that covers ``patch_size`` pixels at ``target_mpp``."""
    if target_mpp is None:
        return patch_size
    if not source_mpp or source_mpp <= 0:
        raise DataError(
            "target_mpp was requested but the image's microns per pixel is unknown; pass the "
            "image resolution (--source-mpp / microns_per_pixel) or drop --target-mpp"
        )
    return max(1, round(patch_size * float(target_mpp) / float(source_mpp)))


def _image_mpp(adata: ad.AnnData, slide: Slide) -> float | None:
    try:
        section = str(adata.obs["section"].iloc[0])
        mpp = adata.uns["spatial"][section]["metadata"].get("microns_per_pixel")
    except (KeyError, IndexError):
        mpp = None
    return mpp or slide.mpp


def image_path_of(adata: ad.AnnData) -> Path:
    """The section's full-resolution image path recorded by its reader."""
    section = str(adata.obs["section"].iloc[0])
    try:
        path = adata.uns["spatial"][section]["metadata"]["image_path"]
    except KeyError:
        path = None
    if not path:
        raise DataError(
            f"section {section}: no full-resolution image recorded "
            f"(uns['spatial'][{section!r}]['metadata']['image_path']); this section has "
            "expression only — pass an image or leave the section out"
        )
    return Path(path)


@contextmanager
def _as_slide(slide_or_path: Slide | str | Path | None, adata: ad.AnnData):
    if isinstance(slide_or_path, Slide):
        yield slide_or_path
        return
    slide = open_slide(slide_or_path if slide_or_path is not None else image_path_of(adata))
    try:
        yield slide
    finally:
        slide.close()


def iter_patches(
    adata: ad.AnnData,
    slide_or_path: Slide | str | Path | None = None,
    patch_size: int = 224,
    target_mpp: float | None = None,
    source_mpp: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield one (patch_size, patch_size, 3) uint8 patch per spot, in ``obs`` order.

    The image is opened once (from ``slide_or_path`` or the section's recorded image path);
    pyramidal slides are read one window at a time, so memory stays bounded.
    """
    with _as_slide(slide_or_path, adata) as slide:
        check_spots_inside(adata, slide)
        mpp = source_mpp or (_image_mpp(adata, slide) if target_mpp is not None else None)
        win = window_size(patch_size, target_mpp, mpp)
        for cx, cy in spot_centers(adata):
            patch = slide.read_patch(cx, cy, win)
            if win != patch_size:
                patch = np.asarray(
                    Image.fromarray(patch).resize((patch_size, patch_size), Image.LANCZOS)
                )
            yield patch


def extract_patches(
    adata: ad.AnnData,
    slide_or_path: Slide | str | Path | None = None,
    patch_size: int = 224,
    target_mpp: float | None = None,
    source_mpp: float | None = None,
) -> np.ndarray:
    """All patches of a section as one (n_spots, patch_size, patch_size, 3) uint8 array."""
    out = np.empty((adata.n_obs, patch_size, patch_size, 3), dtype=np.uint8)
    for i, patch in enumerate(
        iter_patches(adata, slide_or_path, patch_size, target_mpp, source_mpp)
    ):
        out[i] = patch
    return out
