"""cSCC (GEO GSE144240), Visium (Space Ranger outs/) and h5ad readers on real-format fixtures."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from data_fixtures import GENES, counts_for, write_st_section, write_visium_outs

from mclstexp_hub.data.errors import DataError
from mclstexp_hub.data.readers import OBS_COLUMNS, read_cscc, read_h5ad, read_visium
from mclstexp_hub.data.readers.cscc import list_cscc_sections


def _contract(a, section, patient):
    assert list(a.obs.columns) == OBS_COLUMNS
    assert isinstance(a.X, sp.csr_matrix)
    assert (a.obs["section"] == section).all() and (a.obs["patient"] == patient).all()
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["pixel_x", "pixel_y"]].to_numpy())
    assert section in a.uns["spatial"]


@pytest.mark.parametrize("gz", [False, True])
def test_cscc_reader(tmp_path, gz):
    paths = write_st_section(tmp_path, "P2_ST_rep1", gz=gz)
    write_st_section(tmp_path, "P10_ST_rep2", gsm="GSM0000002", gz=gz, seed=4)
    assert list_cscc_sections(tmp_path) == ["P2_ST_rep1", "P10_ST_rep2"]
    a, b = read_cscc(tmp_path)
    _contract(a, "P2_ST_rep1", "P2")
    _contract(b, "P10_ST_rep2", "P10")
    assert a.n_obs == 12 and list(a.var_names) == GENES
    expected = pd.read_csv(paths["counts"], sep="\t", index_col=0)
    np.testing.assert_array_equal(a.X.toarray(), expected.loc[a.obs_names].to_numpy())
    assert a.obs.loc["2x3", "array_x"] == 2 and a.obs.loc["2x3", "array_y"] == 3
    assert a.uns["spatial"]["P2_ST_rep1"]["metadata"]["image_path"] == str(paths["image"])
    mpp = a.uns["spatial"]["P2_ST_rep1"]["metadata"]["microns_per_pixel"]
    assert mpp == pytest.approx(2.0)  # 100 px per 200 µm pitch


def test_cscc_inner_join_drops_unmatched_spots(tmp_path):
    paths = write_st_section(tmp_path)
    spots = pd.read_csv(paths["spots"], sep="\t")
    spots.loc[len(spots)] = [40, 40, 40.0, 40.0, 500.0, 500.0, 1]  # spot without counts
    spots.to_csv(paths["spots"], sep="\t", index=False)
    (a,) = read_cscc(tmp_path)
    assert a.n_obs == 12 and "40x40" not in a.obs_names


@pytest.mark.parametrize("positions,matrix", [("new", "h5"), ("old", "h5"), ("new", "mtx")])
def test_visium_reader(tmp_path, positions, matrix):
    f = write_visium_outs(tmp_path / "sampleA", positions=positions, matrix=matrix)
    a = read_visium(f["outs"], f["image"])
    _contract(a, "sampleA", "sampleA")
    assert a.n_obs == 12 and list(a.obs_names) == f["barcodes"]  # off-tissue barcode dropped
    np.testing.assert_array_equal(a.X.toarray(), f["counts"])
    assert a.obs["array_x"].tolist()[:4] == [1, 2, 3, 4] and a.obs["array_y"].tolist()[0] == 1
    assert a.obs["pixel_x"].iloc[1] == pytest.approx(150 + 200 + 0.3)
    sec = a.uns["spatial"]["sampleA"]
    assert sec["scalefactors"]["spot_diameter_fullres"] == 55.0
    assert sec["metadata"]["microns_per_pixel"] == pytest.approx(1.0)


def test_h5ad_reader(tmp_path):
    counts = counts_for(5)
    a0 = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    a0.var_names = GENES
    a0.obs_names = [f"s{i}" for i in range(5)]
    a0.obsm["spatial"] = np.array(
        [[100, 100], [200, 100], [300, 100], [100, 200], [200, 200]], float
    )
    a0.obs["label"] = ["tumour", "stroma", np.nan, "tumour", "stroma"]
    path = tmp_path / "my.h5ad"
    a0.write_h5ad(path)
    a = read_h5ad(path, image_path=None, section="secX")
    _contract(a, "secX", "secX")
    assert a.obs["label"].tolist()[2] == ""
    assert a.obs["array_x"].tolist() == [0, 1, 2, 0, 1] and a.obs["array_y"].tolist() == [
        0,
        0,
        0,
        1,
        1,
    ]
    assert "derived" in a.uns["spatial"]["secX"]["metadata"]["array_coordinates"]
    a0.X = sp.csr_matrix(np.log1p(counts.astype(np.float32)) + 0.1)
    a0.write_h5ad(path)
    with pytest.raises(DataError, match="non-integer"):
        read_h5ad(path)


# --- clear failures -------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ST-cnts"):
        from mclstexp_hub.data.readers import read_her2st

        read_her2st(tmp_path)
    paths = write_st_section(tmp_path)
    paths["spots"].unlink()
    with pytest.raises(FileNotFoundError, match="spot_data-selection-P2_ST_rep1"):
        read_cscc(tmp_path)
    f = write_visium_outs(tmp_path / "v")
    (f["outs"] / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="tissue_positions"):
        read_visium(f["outs"], f["image"])
    f = write_visium_outs(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="full-resolution image"):
        read_visium(f["outs"], tmp_path / "nope.tif")


def test_counts_and_spots_do_not_join(tmp_path):
    paths = write_st_section(tmp_path)
    cnt = pd.read_csv(paths["counts"], sep="\t", index_col=0)
    cnt.index = [f"spot{i}" for i in range(len(cnt))]
    cnt.to_csv(paths["counts"], sep="\t")
    with pytest.raises(DataError, match="no spot of the spot table matches"):
        read_cscc(tmp_path)


def test_duplicate_spots(tmp_path):
    paths = write_st_section(tmp_path)
    spots = pd.read_csv(paths["spots"], sep="\t")
    spots.loc[len(spots)] = [1.2, 0.9, 1.0, 1.0, 260.0, 260.0, 1]  # rounds onto "1x1"
    spots.to_csv(paths["spots"], sep="\t", index=False)
    with pytest.raises(DataError, match="duplicate spot.*1x1"):
        read_cscc(tmp_path)
    f = write_visium_outs(tmp_path / "v", positions="new")
    pos = pd.read_csv(f["outs"] / "spatial" / "tissue_positions.csv")
    pd.concat([pos, pos.iloc[[0]]]).to_csv(
        f["outs"] / "spatial" / "tissue_positions.csv", index=False
    )
    with pytest.raises(DataError, match="duplicate barcode"):
        read_visium(f["outs"], f["image"])


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN"), (-3, "negative")])
def test_nan_or_negative_counts(tmp_path, bad, match):
    counts = counts_for(12).astype(float)
    counts[4, 2] = bad
    write_st_section(tmp_path, counts=counts)
    with pytest.raises(DataError, match=match):
        read_cscc(tmp_path)


def test_no_spots_left(tmp_path):
    paths = write_st_section(tmp_path)
    spots = pd.read_csv(paths["spots"], sep="\t")
    spots["selected"] = 0
    spots.to_csv(paths["spots"], sep="\t", index=False)
    with pytest.raises(DataError, match="no spot"):
        read_cscc(tmp_path)


def test_truncated_counts_and_h5(tmp_path):
    paths = write_st_section(tmp_path, gz=True)
    data = paths["counts"].read_bytes()
    paths["counts"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="stdata.tsv.gz"):
        read_cscc(tmp_path)
    f = write_visium_outs(tmp_path / "v")
    h5 = f["outs"] / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[:300])
    with pytest.raises(DataError, match="filtered_feature_bc_matrix.h5"):
        read_visium(f["outs"], f["image"])


def test_gzipped_cscc_image_is_reported(tmp_path):
    paths = write_st_section(tmp_path)
    with gzip.open(str(paths["image"]) + ".gz", "wb") as fh:
        fh.write(paths["image"].read_bytes())
    paths["image"].unlink()
    with pytest.raises(DataError, match="gunzip"):
        read_cscc(tmp_path)


def test_data_package_imports_no_model_code():
    """The data subpackage imports only third-party libraries and its own modules."""
    import ast
    from pathlib import Path

    import mclstexp_hub.data as data_pkg

    root = Path(data_pkg.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("mclstexp_hub") and not n.startswith("mclstexp_hub.data")
            ]
    assert offenders == []
    assert len(list(root.rglob("*.py"))) >= 12
