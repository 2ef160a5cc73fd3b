"""Slides (flat and pyramidal) and patch extraction: centring, padding, errors, resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import tissue_image, write_pyramid_tiff, write_visium_outs
from PIL import Image

from mclstexp_hub.data.errors import DataError
from mclstexp_hub.data.patches import extract_patches, iter_patches
from mclstexp_hub.data.readers import read_visium
from mclstexp_hub.models.mclstexp.slide_io_mclstexp import PAD_VALUE, ArraySlide, PyramidSlide, open_slide


@pytest.fixture()
def image(tmp_path):
    img = tissue_image(300, 200, seed=5)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    return img, path


def test_flat_slide_patch_is_exact_crop(image):
    img, path = image
    with open_slide(path) as slide:
        assert isinstance(slide, ArraySlide) and (slide.width, slide.height) == (300, 200)
        patch = slide.read_patch(100.4, 80.0, 32)  # centre rounds to (100, 80)
        np.testing.assert_array_equal(patch, img[64:96, 84:116])
        assert slide.thumbnail(50).size == (50, 33)


def test_border_padding(image):
    img, path = image
    with open_slide(path) as slide:
        patch = slide.read_patch(2, 3, 16)  # window [-6, 10) × [-5, 11)
    assert (patch[:5] == PAD_VALUE).all() and (patch[:, :6] == PAD_VALUE).all()
    np.testing.assert_array_equal(patch[5:, 6:], img[0:11, 0:10])


def test_pyramidal_tiff_read_region_by_region_matches_flat(tmp_path, image):
    img, _ = image
    path = tmp_path / "slide.tiff"
    write_pyramid_tiff(path, img, mpp=0.25)
    with open_slide(path) as slide:
        assert isinstance(slide, PyramidSlide)
        assert (slide.width, slide.height) == (300, 200) and slide.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read_patch(150, 100, 64), img[68:132, 118:182])
        edge = slide.read_patch(295, 198, 16)
        assert (edge[10:] == PAD_VALUE).all()
        np.testing.assert_array_equal(edge[:10, :13], img[190:200, 287:300])


def test_truncated_and_missing_images(tmp_path, image):
    img, _ = image
    jpg = tmp_path / "x.jpg"
    Image.fromarray(img).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:400])
    with pytest.raises(ValueError, match="x.jpg"):
        open_slide(jpg)
    garbage = tmp_path / "y.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="y.png"):
        open_slide(garbage)
    with pytest.raises(FileNotFoundError, match="z.jpg"):
        open_slide(tmp_path / "z.jpg")


def test_extract_patches_and_outside_spots(tmp_path):
    f = write_visium_outs(tmp_path / "s", image_format="png")
    a = read_visium(f["outs"], f["image"])
    img = np.asarray(Image.open(f["image"]).convert("RGB"))
    patches = extract_patches(a, patch_size=48)
    assert patches.shape == (12, 48, 48, 3) and patches.dtype == np.uint8
    x, y = (int(np.floor(float(v))) for v in a.obsm["spatial"][5])  # the reference crop: floor
    np.testing.assert_array_equal(patches[5], img[y - 24 : y + 24, x - 24 : x + 24])
    a.obsm["spatial"][[2, 7]] = [[5000.0, 10.0], [-1.0, 50.0]]
    with pytest.raises(DataError, match=f"{a.obs_names[2]}.*{a.obs_names[7]}"):
        extract_patches(a, patch_size=48)


def test_target_mpp_resampling(tmp_path):
    f = write_visium_outs(tmp_path / "s", image_format="png")  # 1 µm/px from scalefactors
    a = read_visium(f["outs"], f["image"])
    patches = list(iter_patches(a, f["image"], patch_size=32, target_mpp=2.0))
    assert patches[0].shape == (32, 32, 3)
    with open_slide(f["image"]) as slide:
        window = slide.read_patch(*a.obsm["spatial"][0], 64)  # 32 px at 2 µm = 64 µm = 64 px
    expected = np.asarray(Image.fromarray(window).resize((32, 32), Image.LANCZOS))
    np.testing.assert_array_equal(patches[0], expected)
    a.uns["spatial"]["s"]["metadata"]["microns_per_pixel"] = None
    with pytest.raises(DataError, match="microns per pixel"):
        next(iter_patches(a, f["image"], patch_size=32, target_mpp=2.0))


def test_large_pyramid_memory_stays_bounded(tmp_path):
    """A 12,000 × 12,000 slide (432 MB decoded) read patch by patch stays far below that."""
    import tracemalloc

    import tifffile

    size, tile = 12_000, 256
    path = tmp_path / "big.tiff"

    def tiles():
        for ty in range(0, size, tile):
            for tx in range(0, size, tile):
                t = np.full((tile, tile, 3), 230, dtype=np.uint8)
                t[:, :, 0] = (tx // tile) % 256  # each tile column its own red value
                t[:, :, 1] = (ty // tile) % 256
                yield t

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            tiles(),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="rgb",
            compression="zlib",
        )
    tracemalloc.start()
    try:
        with open_slide(path) as slide:
            assert isinstance(slide, PyramidSlide) and slide.width == size
            for cx, cy in [(300, 300), (6000, 9000), (11_990, 11_990), (128 * 30, 100)]:
                patch = slide.read_patch(cx, cy, 224)
                assert patch.shape == (224, 224, 3)
            # last window: x 3728..3951 spans tile columns 14 and 15; y starts above the image
            assert patch[20, 0, 0] == 14 and patch[-1, -1, 0] == 15
            assert (patch[:12] == PAD_VALUE).all() and patch[12, 0, 1] == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# ----------------------------------------------------------- the reference crop convention
@pytest.mark.realdata
def test_patches_equal_the_reference_pil_crop_on_real_her2st(her2st_dir, tmp_path, monkeypatch):
    """Our patches, byte for byte, are the authors' crop: PIL crop at floor(pixel) ± 112.

    Independent of our code path: PIL opens the JPEG itself and crops
    (x - 112, y - 112, x + 112, y + 112) at x = floor(pixel_x), as their `dataset.py` does.
    Checked through `data build` (the dataset's stored PNG patches) and the slide reader the
    pipeline and `predict --tile` use.
    """
    import io

    import pandas as pd

    from mclstexp_hub.data.hf_dataset import build_patch_dataset, load_st_dataset
    from mclstexp_hub.data.preprocess import preprocess_sections
    from mclstexp_hub.data.readers.her2st import read_her2st

    section = read_her2st(her2st_dir, ["C4"])[0]
    image_path = section.uns["spatial"]["C4"]["metadata"]["image_path"]
    raw = pd.read_csv(Path(her2st_dir) / "ST-spotfiles" / "C4_selection.tsv", sep="\t")
    raw_xy = {(int(round(x)), int(round(y))): (px, py)
              for x, y, px, py in raw[["x", "y", "pixel_x", "pixel_y"]].to_numpy()}
    # centres straight from the spot file, keyed by spot id as the reader names spots
    by_id = {sid: raw_xy[(int(ax), int(ay))] for sid, ax, ay in
             section.obs[["spot_id", "array_x", "array_y"]].itertuples(index=False)}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the 9,300 × 9,900 px JPEG
    with Image.open(image_path) as ref_img:
        ref_img = ref_img.convert("RGB")

        def reference(px: float, py: float) -> np.ndarray:
            x, y = int(np.floor(px)), int(np.floor(py))
            return np.asarray(ref_img.crop((x - 112, y - 112, x + 112, y + 112)))

        # 1. the slide reader (pipeline, predict --tile)
        with open_slide(image_path) as slide:
            centres = [by_id[sid] for sid in section.obs["spot_id"]]
            moved = 0
            for cx, cy in centres:
                ours = slide.read_patch(cx, cy, 224)
                assert ours.tobytes() == reference(cx, cy).tobytes()
                moved += int(np.floor(cx + 0.5) != np.floor(cx) or np.floor(cy + 0.5) != np.floor(cy))
        assert moved > 0.5 * len(centres)  # most spots: the old rounding was 1 px off
        # 2. data build → stored PNG patches
        sub = preprocess_sections([section[::9].copy()], genes=list(section.var_names[:30]))
        out = build_patch_dataset(sub, tmp_path / "ds", "her2st")
        ds = load_st_dataset(out)
        assert len(ds) == sub[0].n_obs
        for row in ds:
            png = row["image"]
            stored = np.asarray(png.convert("RGB")) if hasattr(png, "convert") else np.asarray(
                Image.open(io.BytesIO(png["bytes"])).convert("RGB"))
            px, py = by_id[row["spot_id"]]
            assert stored.tobytes() == reference(px, py).tobytes()


def test_datasets_of_the_old_crop_convention_are_refused(tmp_path):
    """A dataset without the current crop convention is refused with a rebuild message."""
    import json

    from mclstexp_hub.data.errors import DataError
    from mclstexp_hub.data.hf_dataset import METADATA_FILE, load_dataset_metadata

    folder = tmp_path / "old"
    folder.mkdir()
    meta = {"format_version": 1, "gene_names": ["A"], "sections": ["S1"],
            "shards": {"S1": "data/x/S1.parquet"}, "n_spots": {"S1": 1}, "config_name": "x",
            "transform": "log10_cp10k_panel"}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="crop convention.*Rebuild"):
        load_dataset_metadata(folder)
    meta["crop_convention"] = "floor-center-v1"
    meta["shards"] = {"S1": "../elsewhere/S1.parquet"}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="leaves the dataset folder"):
        load_dataset_metadata(folder)
