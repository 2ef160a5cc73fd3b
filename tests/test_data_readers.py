"""cSCC (GEO GSE144240), Visium (Space Ranger outs/) and h5ad readers on real-format fixtures."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from data_fixtures import (
    GENES,
    counts_for,
    write_10x_h5,
    write_her2st_section,
    write_st_section,
    write_visium_outs,
)

from mclstexp_hub.data.errors import DataError
from mclstexp_hub.data.readers import (
    OBS_COLUMNS,
    CsccReader,
    H5adReader,
    Her2stReader,
    SectionReader,
    VisiumReader,
    list_readers,
    read_10x_h5,
    read_10x_mtx,
    read_cscc,
    read_h5ad,
    read_her2st,
    read_visium,
    reader_factory,
)
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
    """The data subpackage imports only third-party libraries, its own modules and the pure
    dataset registry ``mclstexp_hub.presets``."""
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
                if n.startswith("mclstexp_hub")
                and not n.startswith("mclstexp_hub.data")
                and n != "mclstexp_hub.presets"
            ]
    assert offenders == []
    assert len(list(root.rglob("*.py"))) >= 12


# --- reader classes behind the factory -------------------------------------------------------


def _write_h5ad(path, n: int = 5, sections: list[str] | None = None):
    a0 = ad.AnnData(X=sp.csr_matrix(counts_for(n).astype(np.float32)))
    a0.var_names = GENES
    a0.obs_names = [f"s{i}" for i in range(n)]
    a0.obsm["spatial"] = np.column_stack([100.0 * (1 + np.arange(n) % 3), 100.0 * (1 + np.arange(n) // 3)])
    if sections:
        a0.obs["section"] = sections
    a0.write_h5ad(path)
    return path


def _fixture_for(kind: str, root):
    """(data_dir, factory options, expected section names, thin-function reading) per kind."""
    if kind == "her2st":
        write_her2st_section(root, "B1")
        write_her2st_section(root, "A2", image=False, seed=2)
        return root, {}, ["A2", "B1"], lambda: read_her2st(root)
    if kind == "cscc":
        write_st_section(root, "P2_ST_rep1")
        write_st_section(root, "P10_ST_rep2", gsm="GSM0000002", seed=4)
        return root, {}, ["P2_ST_rep1", "P10_ST_rep2"], lambda: read_cscc(root)
    if kind == "visium":
        f = write_visium_outs(root / "sampleA")
        opts = {"image": f["image"]}
        return f["outs"], opts, ["sampleA"], lambda: [read_visium(f["outs"], f["image"])]
    if kind == "h5ad":
        path = _write_h5ad(root / "my.h5ad")
        image = write_visium_outs(root / "img")["image"]
        opts = {"image": image}
        return path, opts, ["my"], lambda: [read_h5ad(path, image)]
    if kind == "hest":
        pytest.importorskip("tiffslide")
        from test_data_hest import write_hest_sample

        from mclstexp_hub.data.readers import read_hest

        write_hest_sample(root, "TENX1", genes=GENES)
        write_hest_sample(root, "MEND2", genes=GENES, seed=2)
        return root, {}, ["MEND2", "TENX1"], lambda: read_hest(root)
    raise AssertionError(f"test has no fixture for reader {kind!r}; add one to _fixture_for")


def test_registry_lists_the_five_platforms():
    from mclstexp_hub.data.readers import HestReader

    assert list_readers() == ["her2st", "cscc", "visium", "h5ad", "hest"]
    classes = {"her2st": Her2stReader, "cscc": CsccReader, "visium": VisiumReader,
               "h5ad": H5adReader, "hest": HestReader}
    for kind, cls in classes.items():
        reader = reader_factory(kind)
        assert type(reader) is cls and isinstance(reader, SectionReader) and reader.name == kind
        assert reader.layout  # the CLI help and error messages quote it
    from mclstexp_hub.data.build import KINDS

    assert KINDS == tuple(list_readers())


def test_unknown_kind_names_the_allowed_kinds():
    with pytest.raises(ValueError, match="unknown data kind 'xenium'") as info:
        reader_factory("xenium")
    assert all(kind in str(info.value) for kind in list_readers())
    no_option = r"her2st reader \(Her2stReader\) takes no option\(s\) \['image'\]; its options are none"
    with pytest.raises(ValueError, match=no_option):
        reader_factory("her2st", image="slide.tif")  # an option the reader does not take


@pytest.mark.parametrize("kind", ["her2st", "cscc", "visium", "h5ad", "hest"])
def test_every_registered_reader_reads_its_fixture(tmp_path, kind):
    assert kind in list_readers()
    data_dir, options, names, thin = _fixture_for(kind, tmp_path)
    reader = reader_factory(kind, **options)
    assert reader.list_sections(data_dir) == names
    adatas = reader.read(data_dir)
    assert [a.obs["section"].iloc[0] for a in adatas] == names
    for a, name in zip(adatas, names, strict=True):
        assert list(a.obs.columns) == OBS_COLUMNS and isinstance(a.X, sp.csr_matrix)
        assert list(a.var_names) == GENES and a.n_obs >= 5
        assert name in a.uns["spatial"]
    # the public functions are thin entry points over the same reader: same sections
    for a, b in zip(adatas, thin(), strict=True):
        np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
        assert list(a.obs_names) == list(b.obs_names)


def test_her2st_imaged_listing_and_expression_only_warning(tmp_path, caplog):
    write_her2st_section(tmp_path, "B1")
    write_her2st_section(tmp_path, "A2", image=False)
    reader = Her2stReader()
    assert reader.list_sections(tmp_path, with_images_only=True) == ["B1"]
    with caplog.at_level("WARNING", logger="mclstexp_hub.data.readers.her2st"):
        a2, b1 = reader.read(tmp_path)
    assert "expression only" in caplog.text and "A2" in caplog.text and "B1" not in caplog.text
    assert a2.obs["patient"].iloc[0] == "A" and b1.uns["spatial"]["B1"]["metadata"]["has_image"]


def test_one_section_readers_refuse_several(tmp_path):
    f = write_visium_outs(tmp_path / "v")
    with pytest.raises(DataError, match="one section at a time.*--sections"):
        VisiumReader(image=f["image"]).read(f["outs"], ["a", "b"])
    path = _write_h5ad(tmp_path / "two.h5ad", n=6, sections=["x", "x", "x", "y", "y", "y"])
    reader = H5adReader(image=f["image"])
    assert reader.list_sections(path) == ["x", "y"]
    with pytest.raises(DataError, match="several sections.*x, y"):
        reader.read(path)
    (y,) = reader.read(path, ["y"])
    assert list(y.obs_names) == ["s3", "s4", "s5"] and (y.obs["section"] == "y").all()


def test_build_read_sections_uses_the_registry(tmp_path):
    from mclstexp_hub.data.build import default_license, read_sections
    from mclstexp_hub.presets import get_preset

    write_st_section(tmp_path / "c", "P2_ST_rep1")
    write_st_section(tmp_path / "c", "P3_ST_rep1", image=False)
    (a,) = read_sections("cscc", tmp_path / "c")  # the imaged section only, by default
    assert a.obs["section"].iloc[0] == "P2_ST_rep1"
    with pytest.raises(DataError, match="P3_ST_rep1.*no full-resolution image"):
        read_sections("cscc", tmp_path / "c", ["P3_ST_rep1"])
    with pytest.raises(DataError, match="--image is only for.*visium.*drop --image"):
        read_sections("cscc", tmp_path / "c", image=tmp_path / "x.tif")
    f = write_visium_outs(tmp_path / "v")
    with pytest.raises(DataError, match="visium: pass the full-resolution H&E image with --image"):
        read_sections("visium", f["outs"])
    with pytest.raises(ValueError, match="unknown data kind 'nope'.*her2st"):
        read_sections("nope", tmp_path)
    assert default_license("cscc") == get_preset("cscc").license_note == CsccReader.license_note
    assert default_license("visium") is None
    assert default_license("visium", "alex10x") == get_preset("alex10x").license_note


# --- 10x matrices through scanpy -------------------------------------------------------------


def test_10x_h5_keeps_gene_order_and_drops_other_features(tmp_path):
    counts = counts_for(4, 5)
    genes = ["GENE_B", "GENE_A", "GENE_B", "CD3", "GENE_C"]
    types = ["Gene Expression"] * 3 + ["Antibody Capture", "Gene Expression"]
    barcodes = [f"BC{i}-1" for i in range(4)]
    write_10x_h5(tmp_path / "m.h5", counts, barcodes, genes, feature_types=types)
    matrix, bcs, names = read_10x_h5(tmp_path / "m.h5")
    assert names == ["GENE_B", "GENE_A", "GENE_B", "GENE_C"] and bcs == barcodes
    np.testing.assert_array_equal(matrix.toarray(), counts[:, [0, 1, 2, 4]])
    write_10x_h5(tmp_path / "ab.h5", counts, barcodes, genes, feature_types=["Antibody Capture"] * 5)
    with pytest.raises(DataError, match="ab.h5: no 'Gene Expression' features"):
        read_10x_h5(tmp_path / "ab.h5")


def test_10x_h5_duplicate_genes_made_unique_in_section(tmp_path):
    f = write_visium_outs(tmp_path / "s")
    genes = ["GENE_A", "GENE_A", "GENE_C", "GENE_D", "GENE_E", "GENE_F"]
    write_10x_h5(f["outs"] / "filtered_feature_bc_matrix.h5", f["counts"], f["barcodes"], genes)
    a = read_visium(f["outs"], f["image"])
    assert list(a.var_names) == ["GENE_A", "GENE_A-1", "GENE_C", "GENE_D", "GENE_E", "GENE_F"]


def test_10x_h5_that_is_not_a_feature_matrix(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh.create_group("matrix").create_dataset("data", data=np.arange(3))
    with pytest.raises(DataError, match="other.h5: not a 10x feature-barcode matrix"):
        read_10x_h5(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="10x matrix not found"):
        read_10x_h5(tmp_path / "missing.h5")


def test_10x_mtx_needs_a_complete_folder(tmp_path):
    f = write_visium_outs(tmp_path / "s", matrix="mtx")
    mdir = f["outs"] / "filtered_feature_bc_matrix"
    matrix, barcodes, genes = read_10x_mtx(mdir)
    assert genes == GENES and barcodes == f["barcodes"]
    np.testing.assert_array_equal(matrix.toarray(), f["counts"])
    (mdir / "barcodes.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="barcodes.tsv.gz.*gzip"):
        read_10x_mtx(mdir)


def test_reader_modules_load_neither_scanpy_nor_anndata():
    """Listing readers (the CLI's --help) must stay fast: heavy libraries load on first read."""
    import subprocess
    import sys

    code = (
        "import sys, mclstexp_hub.data.readers as r, mclstexp_hub.data.build; r.list_readers();"
        "print(sorted(m for m in ('scanpy', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, mclstexp_hub.data.readers; print('anndata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
