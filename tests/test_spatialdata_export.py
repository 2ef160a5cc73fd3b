"""Predictions in the scverse ecosystem: SpatialData stores (`predict --out x.zarr`) and
`squidpy.pl.spatial_scatter` on the prediction AnnData as written.

The unit tests build a synthetic prediction with `build_prediction_anndata` (the pipeline's
own constructor); the end-to-end test runs `mclstexp predict` on the synthetic checkpoint.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from mclstexp_hub.outputs import OutputRefused, is_prediction_zarr

LIB = "slide A1"  # a library id that is not a valid element name as is
SCALEF = 0.25
DIAMETER = 20.0


def _prediction(n: int = 24, n_genes: int = 5, seed: int = 0, observed: bool = True):
    from mclstexp_hub.models.mclstexp.pipeline_mclstexp import build_prediction_anndata

    rng = np.random.default_rng(seed)
    cols, rows = np.meshgrid(np.arange(6), np.arange(n // 6))
    spots = pd.DataFrame({
        "spot_id": [f"{x}x{y}" for x, y in zip(cols.ravel(), rows.ravel(), strict=True)],
        "pixel_x": 40.0 + 30 * cols.ravel() + 0.5,
        "pixel_y": 50.0 + 30 * rows.ravel() + 0.25,
    })
    thumb = rng.integers(0, 255, (int(220 * SCALEF), int(260 * SCALEF), 3), dtype=np.uint8)
    adata = build_prediction_anndata(
        rng.random((n, n_genes)).astype(np.float32), [f"GENE{i}" for i in range(n_genes)],
        spots, thumb, SCALEF, DIAMETER, LIB,
        {"units": "log10(1 + cp10k)", "image": "/data/slide.tif", "retrieval_k": 8},
        image_metadata={"width": 260, "height": 220},
        neighbour_spread=rng.random((n, n_genes)).astype(np.float32),
    )
    if observed:
        adata.layers["observed"] = rng.random((n, n_genes)).astype(np.float32)
    return adata


def test_spatialdata_round_trip(tmp_path):
    sd = pytest.importorskip("spatialdata")
    from spatialdata.transformations import get_transformation

    from mclstexp_hub.prediction.spatialdata_io import write_spatialdata_atomic

    adata = _prediction()
    out = write_spatialdata_atomic(adata, tmp_path / "pred.zarr")
    assert out == tmp_path / "pred.zarr" and is_prediction_zarr(out)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.zarr"]  # no temp folders left

    sdata = sd.read_zarr(out)
    assert sdata.attrs["mclstexp"]["format"] == "mclstexp-prediction"
    assert sdata.attrs["mclstexp"]["library_id"] == LIB
    table = sdata.tables["table"]
    np.testing.assert_array_equal(np.asarray(table.X), adata.X)
    for layer in ("observed", "neighbour_spread"):
        np.testing.assert_array_equal(np.asarray(table.layers[layer]), adata.layers[layer])
    assert list(table.var_names) == list(adata.var_names)
    assert list(table.obs["spot_id"]) == list(adata.obs["spot_id"])
    assert table.uns["mclstexp"]["units"] == "log10(1 + cp10k)"

    # shapes: one circle per spot at the full-resolution centre, radius = diameter / 2
    (shapes_name,) = sdata.shapes
    assert shapes_name == "slide_A1_spots"
    circles = sdata.shapes[shapes_name]
    assert len(circles) == adata.n_obs
    np.testing.assert_allclose(circles["radius"], DIAMETER / 2)
    np.testing.assert_allclose(np.c_[circles.geometry.x, circles.geometry.y],
                               adata.obsm["spatial"])
    # the table annotates those shapes: region / instance keys match the circles' index
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == shapes_name
    assert set(table.obs[attrs["region_key"]]) == {shapes_name}
    assert list(table.obs[attrs["instance_key"]]) == list(circles.index)

    # image: the thumbnail, scaled onto full-resolution pixels
    image = sdata.images["slide_A1_hires_image"]
    thumb = adata.uns["spatial"][LIB]["images"]["hires"]
    np.testing.assert_array_equal(np.moveaxis(np.asarray(image), 0, -1), thumb)
    affine = get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.diag(affine)[:2], 1 / SCALEF)


def test_spatialdata_store_overwrite_rules(tmp_path):
    pytest.importorskip("spatialdata")
    from mclstexp_hub.prediction.spatialdata_io import write_spatialdata_atomic

    out = write_spatialdata_atomic(_prediction(seed=1), tmp_path / "pred.zarr")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_spatialdata_atomic(_prediction(seed=2), out)
    second = _prediction(seed=2, observed=False)
    write_spatialdata_atomic(second, out, overwrite=True)
    import spatialdata as sd

    table = sd.read_zarr(out).tables["table"]
    np.testing.assert_array_equal(np.asarray(table.X), second.X)
    assert "observed" not in table.layers
    # a folder that is not our store is never replaced
    foreign = tmp_path / "other.zarr"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert not is_prediction_zarr(foreign)
    with pytest.raises(OutputRefused, match="not a SpatialData store written by mclstexp"):
        write_spatialdata_atomic(second, foreign, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match=r"must end in \.zarr"):
        write_spatialdata_atomic(second, tmp_path / "pred.sdata")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.zarr", "pred.zarr"]


def test_failed_spatialdata_write_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("spatialdata")
    import spatialdata

    from mclstexp_hub.prediction.spatialdata_io import write_spatialdata_atomic

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(spatialdata.SpatialData, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        write_spatialdata_atomic(_prediction(), tmp_path / "pred.zarr")
    assert list(tmp_path.iterdir()) == []


def test_squidpy_spatial_scatter_draws_a_prediction(tmp_path):
    """The prediction AnnData, read back from its .h5ad, plots with squidpy unchanged."""
    pytest.importorskip("squidpy")
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    path = tmp_path / "pred.h5ad"
    _prediction().write_h5ad(path)
    adata = ad.read_h5ad(path)
    figure = tmp_path / "scatter.png"
    sq.pl.spatial_scatter(adata, color=["GENE0", "neighbour_spread"], library_id=LIB,
                          img_res_key="hires", save=figure)
    assert figure.is_file() and figure.stat().st_size > 1000
    import matplotlib.pyplot as plt

    plt.close("all")


def test_cli_predict_writes_a_spatialdata_store(synthetic, tmp_path, capsys):
    sd = pytest.importorskip("spatialdata")
    import anndata as ad

    from mclstexp_hub.cli import main

    out = tmp_path / "pred.zarr"
    argv = ["predict", "--model", synthetic.checkpoint, "--image", synthetic.image, "--spots",
            synthetic.spots_csv, "--observed", synthetic.counts, "--out", out, "--quiet",
            "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    sdata = sd.read_zarr(out)
    table = sdata.tables["table"]
    assert table.n_obs == len(synthetic.spots) and list(table.var_names) == synthetic.genes
    assert "observed" in table.layers
    (shapes,) = sdata.shapes.values()
    assert len(shapes) == len(synthetic.spots)
    np.testing.assert_allclose(shapes["radius"], synthetic.patch_size / 2)
    assert len(sdata.images) == 1
    # the same prediction as the .h5ad output
    h5ad = tmp_path / "pred.h5ad"
    assert main([str(a) for a in [*argv[:-5], "--out", h5ad, "--quiet", "--device", "cpu"]]) == 0
    np.testing.assert_allclose(np.asarray(table.X), ad.read_h5ad(h5ad).X, rtol=1e-5, atol=1e-6)
    # rerun: refused without --overwrite, replaced with it
    assert main([str(a) for a in argv]) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(a) for a in [*argv, "--overwrite"]]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad", "pred.zarr"]
    assert os.path.isdir(out)
