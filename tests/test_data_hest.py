"""HEST-1k reader: a small HEST-layout root written here → `mclstexp data build hest`.

The fixture follows HEST-1k's per-sample files (st/ID.h5ad, wsis/ID.tif, metadata/ID.json)
with a scan resolution (0.25 µm/px) different from the build's --target-mpp (0.5), so the
patches must be cut at the real resolution and resampled. Expected values are computed from
the fixture's own arrays (counts, image), not through the reader.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

pytest.importorskip("tiffslide")

from mclstexp_hub.data.errors import DataError
from mclstexp_hub.synthetic import write_pyramidal_tiff

MPP = 0.25  # the scan's µm per pixel (≠ target)
TARGET_MPP = 0.5
PATCH = 32  # → a 64 px full-resolution window
H, W = 700, 900
GENES = [f"G{i}" for i in range(12)]


def _image(seed: int = 0) -> np.ndarray:
    """A textured RGB image: a smooth gradient plus noise (so resampling errors show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (H + W)], axis=-1)
    return np.clip(base + rng.integers(0, 60, (H, W, 3)), 0, 255).astype(np.uint8)


def write_hest_sample(root: Path, sample: str, *, patient: str | None = "P7", seed: int = 0,
                      counts: np.ndarray | None = None, xy: np.ndarray | None = None,
                      json_file: bool = True, in_tissue: np.ndarray | None = None,
                      genes: list[str] = GENES) -> dict:
    """One HEST-layout sample under ``root``; returns the arrays the files were made from."""
    rng = np.random.default_rng(seed)
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image = _image(seed)
    write_pyramidal_tiff(root / "wsis" / f"{sample}.tif", image, mpp=MPP)
    cols, rows = np.meshgrid(np.arange(6), np.arange(5))
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1)
    if xy is None:  # fractional centres, away from the border
        xy = np.stack([150 + 110 * grid[:, 0] + 0.3, 130 + 100 * grid[:, 1] + 0.7], axis=1)
    n = len(xy)
    if counts is None:
        counts = rng.poisson(3.0, (n, len(genes))).astype(np.float32)
        counts[:, 0] += 1  # no zero-total spot
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n, dtype=int) if in_tissue is None else in_tissue,
            "array_row": grid[:n, 1],
            "array_col": grid[:n, 0],
            "pxl_col_in_fullres": xy[:, 0],
            "pxl_row_in_fullres": xy[:, 1],
        },
        index=[f"spot{i:03d}" for i in range(n)],
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = xy.astype(np.float64)
    adata.write_h5ad(root / "st" / f"{sample}.h5ad")
    meta = {
        "id": sample,
        "dataset_title": "synthetic HEST-layout fixture",
        "st_technology": "Visium",
        "organ": "Bowel",
        "species": "Homo sapiens",
        "patient": patient,
        "spot_diameter": 55.0,
        "inter_spot_dist": 100.0,
        "pixel_size_um_estimated": MPP,
        "pixel_size_um_embedded": 0.2631,
        "fullres_px_width": W,
        "fullres_px_height": H,
        "license": "CC BY 4.0",
    }
    if json_file:
        (root / "metadata" / f"{sample}.json").write_text(json.dumps(meta))
    return {"image": image, "xy": xy, "counts": counts, "obs": obs}


def _genes_file(tmp_path: Path) -> Path:
    path = tmp_path / "genes.txt"
    path.write_text("\n".join(GENES) + "\n")
    return path


def _reference_patch(image: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Crop the 64 px window at floor(centre) - 32 from the array itself, Lanczos to 32 px."""
    win = round(PATCH * TARGET_MPP / MPP)
    x0, y0 = int(np.floor(cx)) - win // 2, int(np.floor(cy)) - win // 2
    crop = Image.fromarray(image).crop((x0, y0, x0 + win, y0 + win))
    return np.asarray(crop.resize((PATCH, PATCH), Image.LANCZOS))


def test_hest_build_keeps_counts_positions_pixels_and_metadata(tmp_path):
    from mclstexp_hub.cli import main
    from mclstexp_hub.data.hf_dataset import METADATA_FILE, load_st_dataset
    from mclstexp_hub.data.readers import list_readers, reader_factory

    assert "hest" in list_readers()
    root = tmp_path / "hest"
    a = write_hest_sample(root, "TENXA1", patient="P7", seed=1)
    b = write_hest_sample(root, "TENXB2", patient=None, seed=2)  # HEST leaves patient empty
    (root / "patches").mkdir()
    (root / "patches" / "TENXA1.h5").write_bytes(b"")  # optional; recorded, not used

    # the reader: raw counts, positions, grid and metadata as in the files
    sections = reader_factory("hest").read(root)
    assert [str(s.obs["section"].iloc[0]) for s in sections] == ["TENXA1", "TENXB2"]
    sec = sections[0]
    np.testing.assert_array_equal(sec.X.toarray(), a["counts"])
    np.testing.assert_allclose(sec.obsm["spatial"], a["xy"])
    np.testing.assert_array_equal(sec.obs["array_x"], a["obs"]["array_col"])
    np.testing.assert_array_equal(sec.obs["array_y"], a["obs"]["array_row"])
    assert set(sec.obs["patient"]) == {"P7"}
    assert set(sections[1].obs["patient"]) == {"TENXB2"}  # the sample id stands in
    md = sec.uns["spatial"]["TENXA1"]["metadata"]
    assert md["microns_per_pixel"] == MPP
    assert md["microns_per_pixel_source"] == "HEST metadata pixel_size_um_estimated"
    assert (md["st_technology"], md["organ"]) == ("Visium", "Bowel")
    assert md["hest_patches_h5"].endswith("TENXA1.h5")
    assert md["source_metadata"]["pixel_size_um_embedded"] == 0.2631
    assert sec.uns["spatial"]["TENXA1"]["scalefactors"]["spot_diameter_fullres"] == 55.0 / MPP

    # the build, through the CLI (choices come from the reader registry)
    out = tmp_path / "ds"
    rc = main(["data", "build", "hest", "--data-dir", str(root), "--out", str(out),
               "--target-mpp", str(TARGET_MPP), "--patch-size", str(PATCH),
               "--genes", str(_genes_file(tmp_path))])
    assert rc in (0, None)
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["sections"] == ["TENXA1", "TENXB2"]
    assert meta["target_mpp"] == TARGET_MPP
    assert meta["patients"] == {"TENXA1": "P7", "TENXB2": "TENXB2"}
    per = meta["per_section"]["TENXA1"]
    assert per["source_mpp"] == MPP and per["window_px"] == 2 * PATCH
    assert per["source_metadata"]["st_technology"] == "Visium"
    assert per["source_metadata"]["organ"] == "Bowel"
    assert per["source_metadata"]["patient"] == "P7"
    assert "patient" not in meta["per_section"]["TENXB2"]["source_metadata"]

    ds = load_st_dataset(out)
    assert len(ds) == 60
    fixtures = {"TENXA1": a, "TENXB2": b}
    for row in ds:
        src = fixtures[row["section"]]
        i = int(row["spot_id"][4:])
        cx, cy = src["xy"][i]
        np.testing.assert_allclose(row["pixel_center"], [cx, cy], atol=1e-3)
        c = src["counts"][i].astype(np.float64)
        expected = np.log10(1 + 1e4 * c / c.sum())  # the default transform, from the raw counts
        np.testing.assert_allclose(row["expression"], expected, rtol=1e-5, atol=1e-6)
        png = row["image"]
        stored = np.asarray(png.convert("RGB")) if hasattr(png, "convert") else np.asarray(
            Image.open(io.BytesIO(png["bytes"])).convert("RGB"))
        assert stored.shape == (PATCH, PATCH, 3)
        np.testing.assert_array_equal(stored, _reference_patch(src["image"], cx, cy))


def test_hest_listing_skips_incomplete_samples_and_names_the_missing_file(tmp_path, caplog):
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.readers import reader_factory

    root = tmp_path / "hest"
    write_hest_sample(root, "OK1")
    write_hest_sample(root, "NOJSON", json_file=False)
    reader = reader_factory("hest")
    with caplog.at_level("WARNING"):
        assert reader.list_sections(root) == ["OK1"]
    assert "NOJSON" in caplog.text and "metadata/NOJSON.json" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"metadata/NOJSON\.json not found"):
        build_dataset("hest", root, tmp_path / "out", sections=["NOJSON"],
                      genes_file=_genes_file(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()
    (root / "metadata" / "OK1.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no complete HEST sample.*OK1\.json"):
        reader.list_sections(root)


def test_hest_refuses_non_integer_counts(tmp_path):
    from mclstexp_hub.data.readers import reader_factory

    root = tmp_path / "hest"
    counts = np.full((30, len(GENES)), 1.5, dtype=np.float32)  # normalised, not raw counts
    write_hest_sample(root, "NORM", counts=counts)
    with pytest.raises(DataError, match="non-integer"):
        reader_factory("hest").read_section(root, "NORM")


def test_hest_refuses_spots_outside_the_slide(tmp_path):
    from mclstexp_hub.data.readers import reader_factory

    root = tmp_path / "hest"
    xy = np.stack([np.linspace(100.5, 800.5, 30), np.full(30, 200.0)], axis=1)
    xy[3] = (W + 40.0, 200.0)  # off the right edge
    write_hest_sample(root, "OUT", xy=xy)
    with pytest.raises(DataError, match=r"outside the 900×700 image: spot003"):
        reader_factory("hest").read_section(root, "OUT")


def test_hest_drops_spots_outside_tissue_and_checks_pixel_columns(tmp_path):
    from mclstexp_hub.data.readers import reader_factory

    root = tmp_path / "hest"
    flags = np.ones(30, dtype=int)
    flags[[0, 5]] = 0
    write_hest_sample(root, "TIS", in_tissue=flags)
    sec = reader_factory("hest").read_section(root, "TIS")
    assert sec.n_obs == 28 and "spot000" not in sec.obs_names
    assert sec.uns["spatial"]["TIS"]["metadata"]["spots_not_in_tissue"] == 2
    # obsm['spatial'] that is not the full-resolution position of obs pxl_* is refused
    adata = ad.read_h5ad(root / "st" / "TIS.h5ad")
    adata.obsm["spatial"] = adata.obsm["spatial"] / 4
    adata.write_h5ad(root / "st" / "TIS.h5ad")
    with pytest.raises(DataError, match="disagree"):
        reader_factory("hest").read_section(root, "TIS")


def test_hest_metadata_without_pixel_size_is_an_error(tmp_path):
    from mclstexp_hub.data.readers import reader_factory

    root = tmp_path / "hest"
    write_hest_sample(root, "NOMPP")
    path = root / "metadata" / "NOMPP.json"
    meta = json.loads(path.read_text())
    del meta["pixel_size_um_estimated"], meta["pixel_size_um_embedded"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="pixel_size_um_estimated"):
        reader_factory("hest").read_section(root, "NOMPP")
