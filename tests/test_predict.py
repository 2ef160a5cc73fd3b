"""`mclstexp predict`: real HER2+ slides → pred.h5ad, gene maps, tiling, Visium, bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_pipeline_helpers import (
    UNITS,
    build_checkpoint,
    her2st_spots,
)

from mclstexp_hub.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CROP = (1700, 3000, 2900, 4200)  # a 1200 × 1200 window of B4 around real spots


# The checkpoint (C2's real bank) and the B4 slide come from tests/conftest.py.
pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory, her2st_dir, b4_image):
    """A real 1200-px window of B4 as PNG, with the B4 spots inside it (shifted)."""
    folder = tmp_path_factory.mktemp("small")
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(b4_image) as img:
        img.crop(CROP).save(folder / "b4_crop.png")
    spots = her2st_spots(her2st_dir, "B4")
    spots["pixel_x"] -= CROP[0]
    spots["pixel_y"] -= CROP[1]
    inside = spots[(spots.pixel_x.between(0, 1199)) & (spots.pixel_y.between(0, 1199))]
    inside.to_csv(folder / "spots.csv", index=False)
    return folder / "b4_crop.png", folder / "spots.csv", inside


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_cli_end_to_end_on_her2st_b4(checkpoint, her2st_dir, her2st_panel, b4_image, tmp_path,
                                     capsys):
    spots = her2st_spots(her2st_dir, "B4", every=5)
    spots.to_csv(tmp_path / "b4_spots.csv", index=False)
    out = tmp_path / "b4_pred.h5ad"
    counts = Path(her2st_dir) / "ST-cnts" / "B4.tsv.gz"
    code, stdout, stderr = _run(
        ["predict", "--model", checkpoint, "--image", b4_image, "--spots", tmp_path / "b4_spots.csv",
         "--out", out, "--plot", "GNAS", "FASN", "--observed", counts, "--batch-size", 16,
         "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "mean per-gene Pearson r" in stdout
    adata = ad.read_h5ad(out)
    # genes, values, coordinates
    assert list(adata.var_names) == her2st_panel
    assert adata.X.dtype == np.float32 and np.isfinite(adata.X).all()
    assert list(adata.obs_names) == spots["spot_id"].tolist()
    assert np.allclose(adata.obsm["spatial"], spots[["pixel_x", "pixel_y"]].to_numpy())
    # scanpy conventions: image + scale factors under uns["spatial"][library_id]
    library = adata.uns["spatial"]["BT10737_D2_HE"]
    scale = float(library["scalefactors"]["tissue_hires_scalef"])
    hires = library["images"]["hires"]
    assert hires.dtype == np.uint8 and hires.shape == (2000, round(9272 * scale), 3)
    assert abs(scale - 2000 / 9923) < 1e-3
    assert library["scalefactors"]["spot_diameter_fullres"] == 224.0
    # units and provenance
    info = adata.uns["mclstexp"]
    assert info["units"] == UNITS and info["expression_transform"] == "log10_cp10k_panel"
    assert info["model"] == str(checkpoint) and info["model_revision"] == "local directory"
    assert info["spot_bank_n_spots"] == 187 and list(info["spot_bank_sections"]) == ["C2"]
    assert info["retrieval_k"] == 10 and info["retrieval_weighting"] == "inverse_square"
    assert info["retrieval_distance"] == "l1" and info["package_version"]
    assert info["spots_source"].startswith("csv:")
    assert "test bank from HER2+ C2" in info["spot_bank_metadata_json"]
    # observed expression in the same units, Pearson r per gene
    assert adata.layers["observed"].shape == adata.shape
    assert info["observed_n_spots_matched"] == len(spots)
    assert np.nanmax(adata.layers["observed"]) < 4.0  # log10 CP10k units, as the bank
    r = adata.var["pearson_r"].to_numpy()
    assert np.isfinite(r).sum() > 700 and np.all(np.abs(r[np.isfinite(r)]) <= 1)
    # pictures
    for gene in ("GNAS", "FASN"):
        png = tmp_path / "b4_pred_maps" / f"{gene}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as img:
            assert img.width > img.height  # predicted | observed side by side
    # scanpy draws it unchanged
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    axes = sc.pl.spatial(adata, color="GNAS", show=False)
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
    assert adata.n_obs == len(spots) and adata.uns["mclstexp"]["library_id"] == "b4_crop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad"]


def test_failed_write_leaves_nothing(checkpoint, small_slide, tmp_path, capsys, monkeypatch):
    image, spots_csv, _ = small_slide

    def broken_write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_write)
    with pytest.raises(OSError, match="disk full"):
        main(["predict", "--model", str(checkpoint), "--image", str(image), "--spots",
              str(spots_csv), "--out", str(tmp_path / "pred.h5ad"), "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_tile_covers_the_tissue_of_a_real_slide(her2st_dir, b4_image):
    from scipy.spatial import cKDTree

    from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide
    from mclstexp_hub.prediction.tiling import tile_spots

    with open_slide(b4_image) as slide:
        tiles = tile_spots(slide, pitch=224, patch_size=224)
        width, height = slide.width, slide.height
    xy = tiles[["pixel_x", "pixel_y"]].to_numpy()
    assert ((xy >= 0) & (xy < [width, height])).all()
    assert tiles["spot_id"].is_unique and (tiles["tissue_fraction"] >= 0.5).all()
    steps = np.unique(np.diff(np.unique(xy[:, 0])))
    assert np.allclose(steps % 224, 0)  # on the regular grid
    real = her2st_spots(her2st_dir, "B4")[["pixel_x", "pixel_y"]].to_numpy()
    # the real spots (under tissue by construction) are covered by tiles ...
    covered = cKDTree(xy).query(real)[0] <= 224
    assert covered.mean() > 0.85
    # ... and tiles lie on tissue, not glass: near a real spot (ST pitch ≈ 320 px)
    near = cKDTree(real).query(xy)[0] <= 2 * 320
    assert near.mean() > 0.9


def test_cli_tile_on_a_real_slide(checkpoint, b4_image, tmp_path, capsys):
    out = tmp_path / "tiles.h5ad"
    code, _, err = _run(["predict", "--model", checkpoint, "--image", b4_image, "--tile",
                              "--tile-pitch", 1500, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(out)
    assert 3 <= adata.n_obs <= 30
    assert {"array_x", "array_y", "tissue_fraction"} <= set(adata.obs.columns)
    assert adata.uns["mclstexp"]["spots_source"].startswith("tile:")
    assert adata.obs_names[0].startswith("tile_")


def test_visium_outs_positions_scalefactors_and_observed(checkpoint, her2st_dir, her2st_panel,
                                                         small_slide, tmp_path, capsys):
    """A Space Ranger outs/ folder: in-tissue positions, spot diameter, observed matrix."""
    from data_fixtures import write_10x_h5

    image, _, spots = small_slide
    counts = pd.read_csv(Path(her2st_dir) / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
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
    assert adata.uns["spatial"]["b4_crop"]["scalefactors"]["spot_diameter_fullres"] == 159.5
    assert list(adata.obs["array_x"]) == list(range(len(spots)))
    assert np.isfinite(adata.layers["observed"]).all()  # observed read from the outs matrix
    assert adata.uns["mclstexp"]["observed_n_spots_matched"] == len(spots)


def test_bad_inputs_give_clear_errors(checkpoint, c2, small_slide, tmp_path, capsys):
    image, spots_csv, spots = small_slide
    base = ["predict", "--model", checkpoint, "--image", image, "--quiet"]
    out = ["--out", tmp_path / "x.h5ad"]

    outside = spots.copy()
    outside.loc[outside.index[0], "pixel_x"] = 5000.0
    outside.to_csv(tmp_path / "outside.csv", index=False)
    code, _, err = _run([*base, "--spots", tmp_path / "outside.csv", *out], capsys)
    assert code == 2 and "outside the 1200x1200 image" in err and outside["spot_id"].iloc[0] in err

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(["predict", "--model", checkpoint, "--image", tmp_path / "broken.jpg",
                         "--spots", spots_csv, *out], capsys)
    assert code == 2 and "broken.jpg" in err and "cannot decode" in err

    nobank = tmp_path / "nobank"
    build_checkpoint(nobank, c2, with_bank=False, save_code=False)
    code, _, err = _run(["predict", "--model", nobank, "--image", image, "--spots", spots_csv,
                         *out], capsys)
    assert code == 2 and "no spot bank" in err

    code, _, err = _run([*base, "--spots", spots_csv, "--plot", "NOTAGENE", *out], capsys)
    assert code == 2 and "NOTAGENE" in err and "gene panel" in err

    wrong = pd.DataFrame({"GNAS": [1, 2], "FASN": [3, 4]}, index=spots["spot_id"].iloc[:2])
    wrong.to_csv(tmp_path / "wrong_panel.tsv", sep="\t")
    code, _, err = _run([*base, "--spots", spots_csv, "--observed", tmp_path / "wrong_panel.tsv",
                         *out], capsys)
    assert code == 2 and "783 of the model's 785 genes are absent" in err

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


def test_st_spot_detector_tables_are_read_as_they_are(her2st_dir):
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
        sha = hub.add_commit("org/her2st-test", checkpoint)
        argv = ["predict", "--model", "org/her2st-test", "--revision", "main", "--image",
                str(image), "--spots", str(spots_csv), "--out", str(out), "--quiet"]
        proc = subprocess.run(
            [sys.executable, "-c", f"from mclstexp_hub.cli import main; raise SystemExit(main({argv!r}))"],
            capture_output=True, text=True, timeout=300, check=False,
            env=client_env(hub.url, tmp_path / "hf_home"),
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = ad.read_h5ad(out).uns["mclstexp"]
    assert info["model"] == "org/her2st-test"
    assert info["model_revision"] == f"main (commit {sha})"
