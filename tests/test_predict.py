"""`mclstexp predict`: slides → pred.h5ad, gene maps, tiling, Visium, bad inputs.

Behaviour runs on every clone, on the synthetic checkpoint and slide of tests/conftest.py
(`synthetic`); tests about the real HER2+ files themselves are marked `realdata`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_pipeline_helpers import her2st_spots

from mclstexp_hub.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(synthetic):
    return synthetic.checkpoint


@pytest.fixture(scope="module")
def crop(synthetic):
    """(left, top, right, bottom): the window of the synthetic slide around its spots' patches."""
    xy = synthetic.spots[["pixel_x", "pixel_y"]].to_numpy()
    half = synthetic.patch_size // 2
    width, height = synthetic.image_size
    left, top = (max(0, int(v) - half) for v in xy.min(axis=0))
    right, bottom = (min(limit, int(v) + half + 1) for v, limit in zip(xy.max(axis=0),
                                                                       (width, height)))
    assert (left, top) != (0, 0) and (right, bottom) != (width, height)  # a real window
    return left, top, right, bottom


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory, synthetic, crop):
    """A window of the synthetic slide as PNG, with the slide's spots inside it (shifted)."""
    folder = tmp_path_factory.mktemp("small")
    name = f"{synthetic.slide.lower()}_crop.png"
    with Image.open(synthetic.image) as img:
        img.crop(crop).save(folder / name)
    width, height = crop[2] - crop[0], crop[3] - crop[1]
    spots = synthetic.spots.copy()
    spots["pixel_x"] -= crop[0]
    spots["pixel_y"] -= crop[1]
    inside = spots[(spots.pixel_x.between(0, width - 1)) & (spots.pixel_y.between(0, height - 1))]
    assert len(inside) > 5
    inside.to_csv(folder / "spots.csv", index=False)
    return folder / name, folder / "spots.csv", inside


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_end_to_end(checkpoint, synthetic, tmp_path, capsys):
    spots = synthetic.spots
    spots.to_csv(tmp_path / "spots.csv", index=False)
    out = tmp_path / "pred.h5ad"
    plotted = synthetic.genes[:2]
    code, stdout, stderr = _run(
        ["predict", "--model", checkpoint, "--image", synthetic.image, "--spots",
         tmp_path / "spots.csv", "--out", out, "--plot", *plotted, "--observed", synthetic.counts,
         "--batch-size", 16, "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "mean per-gene Pearson r" in stdout
    adata = ad.read_h5ad(out)
    # genes, values, coordinates
    assert list(adata.var_names) == synthetic.genes
    assert adata.X.dtype == np.float32 and np.isfinite(adata.X).all()
    assert list(adata.obs_names) == spots["spot_id"].tolist()
    assert np.allclose(adata.obsm["spatial"], spots[["pixel_x", "pixel_y"]].to_numpy())
    # scanpy conventions: image + scale factors under uns["spatial"][library_id]
    library = adata.uns["spatial"][synthetic.image.stem]
    scale = float(library["scalefactors"]["tissue_hires_scalef"])
    hires = library["images"]["hires"]
    width, height = synthetic.image_size
    assert hires.dtype == np.uint8 and hires.shape == (round(height * scale), round(width * scale), 3)
    assert max(hires.shape[:2]) == min(2000, max(width, height))
    assert abs(scale - min(1.0, 2000 / max(width, height))) < 1e-3
    assert library["scalefactors"]["spot_diameter_fullres"] == float(synthetic.patch_size)
    # units and provenance
    info = adata.uns["mclstexp"]
    assert info["units"] == synthetic.metadata["units"]
    assert info["expression_transform"] == synthetic.metadata["transform"] == "log10_cp10k_panel"
    assert info["model"] == str(checkpoint) and info["model_revision"] == "local directory"
    assert info["spot_bank_n_spots"] == synthetic.n_bank_spots
    assert list(info["spot_bank_sections"]) == synthetic.sections
    assert info["retrieval_k"] == synthetic.retrieval_k
    assert info["retrieval_weighting"] == "inverse_square"
    assert info["retrieval_distance"] == "l1" and info["package_version"]
    assert info["spots_source"].startswith("csv:")
    bank_meta = json.loads(info["spot_bank_metadata_json"])
    assert bank_meta["source"] == synthetic.metadata["dataset_name"]
    assert bank_meta["sections"] == synthetic.sections
    # observed expression in the same units, Pearson r per gene
    assert adata.layers["observed"].shape == adata.shape
    assert info["observed_n_spots_matched"] == len(spots)
    assert np.nanmax(adata.layers["observed"]) < 4.0  # log10 CP10k units, as the bank
    r = adata.var["pearson_r"].to_numpy()
    assert np.isfinite(r).sum() > 0.85 * len(synthetic.genes)
    assert np.all(np.abs(r[np.isfinite(r)]) <= 1)
    # pictures
    for gene in plotted:
        png = tmp_path / "pred_maps" / f"{gene}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as img:
            assert img.width > img.height  # predicted | observed side by side
    # scanpy draws it unchanged
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    axes = sc.pl.spatial(adata, color=plotted[0], show=False)
    assert axes is not None


def test_existing_output_is_refused_then_overwritten(checkpoint, small_slide, tmp_path, capsys):
    image, spots_csv, spots = small_slide
    out = tmp_path / "pred.h5ad"
    out.write_bytes(b"precious")
    argv = ["predict", "--model", checkpoint, "--image", image, "--spots", spots_csv, "--out", out,
            "--quiet"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    # --overwrite replaces only a prediction this tool wrote, never someone else's file
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 2 and "not a prediction file written by mclstexp" in err
    assert out.read_bytes() == b"precious"
    out.unlink()
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(out)
    assert adata.n_obs == len(spots) and adata.uns["mclstexp"]["library_id"] == image.stem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad"]


def test_failed_write_leaves_nothing(checkpoint, small_slide, tmp_path, capsys, monkeypatch):
    image, spots_csv, _ = small_slide

    def broken_write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_write)
    code, _, err = _run(["predict", "--model", checkpoint, "--image", image, "--spots", spots_csv,
                         "--out", tmp_path / "pred.h5ad", "--quiet"], capsys)
    assert code == 2 and "disk full" in err  # an OSError is a user error: one line, exit 2
    assert list(tmp_path.iterdir()) == []


def _assert_tiles_cover_the_tissue(image, spots, patch_size, spot_pitch):
    """Tiles at pitch = patch size lie on the grid, cover the spots and stay off the glass."""
    from scipy.spatial import cKDTree

    from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide
    from mclstexp_hub.prediction.tiling import tile_spots

    with open_slide(image) as slide:
        tiles = tile_spots(slide, pitch=patch_size, patch_size=patch_size)
        width, height = slide.width, slide.height
    xy = tiles[["pixel_x", "pixel_y"]].to_numpy()
    assert len(xy) > 0
    assert ((xy >= 0) & (xy < [width, height])).all()
    assert tiles["spot_id"].is_unique and (tiles["tissue_fraction"] >= 0.5).all()
    steps = np.unique(np.diff(np.unique(xy[:, 0])))
    assert np.allclose(steps % patch_size, 0)  # on the regular grid
    real = spots[["pixel_x", "pixel_y"]].to_numpy()
    # the spots (under tissue by construction) are covered by tiles ...
    covered = cKDTree(xy).query(real)[0] <= patch_size
    assert covered.mean() > 0.85
    # ... and tiles lie on tissue, not glass: near a spot
    near = cKDTree(real).query(xy)[0] <= 2 * spot_pitch
    assert near.mean() > 0.9


def test_tile_covers_the_tissue(synthetic):
    _assert_tiles_cover_the_tissue(synthetic.image, synthetic.spots, synthetic.patch_size,
                                   synthetic.pitch)


@pytest.mark.realdata
def test_tile_covers_the_tissue_of_a_real_slide(her2st_dir, b4_image):
    """The same tissue detection on real H&E (ST pitch ≈ 320 px, 224-px spot window)."""
    _assert_tiles_cover_the_tissue(b4_image, her2st_spots(her2st_dir, "B4"), 224, 320)


def test_cli_tile(checkpoint, synthetic, tmp_path, capsys):
    out = tmp_path / "tiles.h5ad"
    code, _, err = _run(["predict", "--model", checkpoint, "--image", synthetic.image, "--tile",
                         "--tile-pitch", 2 * synthetic.patch_size, "--out", out, "--quiet"],
                        capsys)
    assert code == 0, err
    adata = ad.read_h5ad(out)
    assert 3 <= adata.n_obs <= 30
    assert {"array_x", "array_y", "tissue_fraction"} <= set(adata.obs.columns)
    assert adata.uns["mclstexp"]["spots_source"].startswith("tile:")
    assert adata.obs_names[0].startswith("tile_")


def test_visium_outs_positions_scalefactors_and_observed(checkpoint, synthetic, small_slide,
                                                         tmp_path, capsys):
    """A Space Ranger outs/ folder: in-tissue positions, spot diameter, observed matrix."""
    from data_fixtures import write_10x_h5

    image, _, spots = small_slide
    counts = pd.read_csv(synthetic.counts, sep="\t", index_col=0)
    spots = spots[spots["spot_id"].isin(counts.index)].reset_index(drop=True)
    barcodes = [f"AAAC{i:04d}-1" for i in range(len(spots))]
    outs = tmp_path / "outs"
    (outs / "spatial").mkdir(parents=True)
    positions = pd.DataFrame({
        "barcode": barcodes + ["GGGG0000-1"], "in_tissue": [1] * len(spots) + [0],
        "array_row": list(range(len(spots))) + [99], "array_col": list(range(len(spots))) + [99],
        "pxl_row_in_fullres": list(spots["pixel_y"].round().astype(int)) + [5],
        "pxl_col_in_fullres": list(spots["pixel_x"].round().astype(int)) + [5],
    })
    positions.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"spot_diameter_fullres": 159.5, "tissue_hires_scalef": 0.2, "fiducial_diameter_fullres": 250}))
    matrix = counts.loc[spots["spot_id"]].to_numpy()
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", matrix, barcodes, list(counts.columns))
    out = tmp_path / "visium.h5ad"
    code, _, err = _run(["predict", "--model", checkpoint, "--image", image, "--visium", outs,
                              "--out", out, "--quiet"], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(out)
    assert list(adata.obs_names) == barcodes  # the out-of-tissue spot is left out
    assert adata.uns["spatial"][image.stem]["scalefactors"]["spot_diameter_fullres"] == 159.5
    assert list(adata.obs["array_x"]) == list(range(len(spots)))
    assert np.isfinite(adata.layers["observed"]).all()  # observed read from the outs matrix
    assert adata.uns["mclstexp"]["observed_n_spots_matched"] == len(spots)


def test_bad_inputs_give_clear_errors(checkpoint, synthetic, crop, small_slide, tmp_path, capsys):
    image, spots_csv, spots = small_slide
    base = ["predict", "--model", checkpoint, "--image", image, "--quiet"]
    out = ["--out", tmp_path / "x.h5ad"]
    width, height = crop[2] - crop[0], crop[3] - crop[1]
    genes = synthetic.genes

    outside = spots.copy()
    outside.loc[outside.index[0], "pixel_x"] = 5.0 * width
    outside.to_csv(tmp_path / "outside.csv", index=False)
    code, _, err = _run([*base, "--spots", tmp_path / "outside.csv", *out], capsys)
    assert code == 2 and f"outside the {width}x{height} image" in err
    assert outside["spot_id"].iloc[0] in err

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(["predict", "--model", checkpoint, "--image", tmp_path / "broken.jpg",
                         "--spots", spots_csv, *out], capsys)
    assert code == 2 and "broken.jpg" in err and "cannot decode" in err

    nobank = synthetic.checkpoint_without_bank
    code, _, err = _run(["predict", "--model", nobank, "--image", image, "--spots", spots_csv,
                         *out], capsys)
    assert code == 2 and "no spot bank" in err

    code, _, err = _run([*base, "--spots", spots_csv, "--plot", "NOTAGENE", *out], capsys)
    assert code == 2 and "NOTAGENE" in err and "gene panel" in err

    wrong = pd.DataFrame({genes[0]: [1, 2], genes[1]: [3, 4]}, index=spots["spot_id"].iloc[:2])
    wrong.to_csv(tmp_path / "wrong_panel.tsv", sep="\t")
    code, _, err = _run([*base, "--spots", spots_csv, "--observed", tmp_path / "wrong_panel.tsv",
                         *out], capsys)
    assert code == 2 and f"{len(genes) - 2} of the model's {len(genes)} genes are absent" in err

    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp_path / "nocols.csv", index=False)
    code, _, err = _run([*base, "--spots", tmp_path / "nocols.csv", *out], capsys)
    assert code == 2 and "pixel_x" in err

    code, _, err = _run(["predict", "--model", tmp_path / "missing_ckpt", "--image", image,
                         "--spots", spots_csv, *out], capsys)
    assert code == 2 and "model not found" in err

    with pytest.raises(SystemExit):
        main(["predict", "--model", str(checkpoint), "--image", str(image), "--tile", "--spots",
              str(spots_csv), "--out", str(tmp_path / "x.h5ad")])
    assert not (tmp_path / "x.h5ad").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial.h5ad")]


def test_st_spot_detector_tables_are_read_as_they_are(synthetic):
    """A Spot Detector selection table gives its selected spots, with the count tables' ids."""
    from mclstexp_hub.prediction.spots import read_spots_csv

    path = synthetic.data_dir / "ST-spotfiles" / f"{synthetic.slide}_selection.tsv"
    raw = pd.read_csv(path, sep="\t")
    assert (raw["selected"] == 0).any()  # the generator leaves spots off the tissue unselected
    table = read_spots_csv(path)
    assert len(table) == (raw["selected"] > 0).sum() == len(synthetic.spots)
    assert table["spot_id"].is_unique and table["spot_id"].tolist() == synthetic.spots["spot_id"].tolist()
    assert {"pixel_x", "pixel_y", "array_x", "array_y"} <= set(table.columns)
    counts = pd.read_csv(synthetic.counts, sep="\t", index_col=0, usecols=[0, 1])
    assert table["spot_id"].isin(counts.index).all()


@pytest.mark.realdata
def test_st_spot_detector_tables_of_real_her2st_are_read_as_they_are(her2st_dir):
    from mclstexp_hub.prediction.spots import read_spots_csv

    table = read_spots_csv(Path(her2st_dir) / "ST-spotfiles" / "B4_selection.tsv")
    assert len(table) == 284 and table["spot_id"].is_unique
    assert {"pixel_x", "pixel_y", "array_x", "array_y"} <= set(table.columns)
    counts = pd.read_csv(Path(her2st_dir) / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0,
                         usecols=[0, 1])
    assert table["spot_id"].isin(counts.index).sum() == 283  # as the HER2+ reader joins them


@pytest.mark.slow
def test_predict_from_a_hub_repo_records_the_commit(checkpoint, small_slide, tmp_path):
    """`--model org/name --revision main` through a local stand-in of the Hub (no network)."""
    import subprocess
    import sys

    from hub_server import LocalHub, client_env

    image, spots_csv, _ = small_slide
    out = tmp_path / "hub_pred.h5ad"
    with LocalHub() as hub:
        sha = hub.add_commit("org/synthetic-test", checkpoint)
        argv = ["predict", "--model", "org/synthetic-test", "--revision", "main", "--image",
                str(image), "--spots", str(spots_csv), "--out", str(out), "--quiet"]
        proc = subprocess.run(
            [sys.executable, "-c", f"from mclstexp_hub.cli import main; raise SystemExit(main({argv!r}))"],
            capture_output=True, text=True, timeout=300, check=False,
            env=client_env(hub.url, tmp_path / "hf_home"),
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = ad.read_h5ad(out).uns["mclstexp"]
    assert info["model"] == "org/synthetic-test"
    assert info["model_revision"] == f"main (commit {sha})"


def test_slide_opened_in_background_is_the_same_slide_and_is_closed(tmp_path):
    """predict decodes the slide in a worker thread: same pixels and thumbnail as a plain
    open_slide, errors raised where the result is asked for, the slide closed afterwards."""
    from PIL import Image

    from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide
    from mclstexp_hub.models.mclstexp.slide_predict_mclstexp import HIRES_MAX_SIZE
    from mclstexp_hub.prediction.predict import open_in_background

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    image = tmp_path / "slide.png"
    Image.fromarray(pixels).save(image)
    plain = open_slide(image)
    with open_in_background(image) as opening:
        slide = opening.result()
        assert np.array_equal(slide.read_region(0, 0, 420, 300), pixels)
        first = slide.thumbnail(HIRES_MAX_SIZE)
        first.paste((0, 0, 0), (0, 0, 50, 50))  # callers get a copy, never the kept one
        assert np.array_equal(np.asarray(slide.thumbnail(HIRES_MAX_SIZE)),
                              np.asarray(plain.thumbnail(HIRES_MAX_SIZE)))
    assert slide._array.size == 0  # closed when the block ended
    with open_in_background(tmp_path / "missing.png") as opening, \
            pytest.raises(FileNotFoundError, match="image not found"):
        opening.result()
