"""HER2+ reader, preprocessing and build → load round trip on the real her2st files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from data_fixtures import GENE_LISTS, HER2ST_DIR

pytestmark = pytest.mark.realdata

if not (HER2ST_DIR / "ST-cnts").is_dir():
    pytest.skip(f"../shared/data/her2st not found: {HER2ST_DIR}", allow_module_level=True)

from mclstexp_hub.data.patches import extract_patches
from mclstexp_hub.data.preprocess import preprocess_sections, read_gene_panel
from mclstexp_hub.data.readers import OBS_COLUMNS
from mclstexp_hub.data.readers.her2st import (
    list_her2st_sections,
    read_her2st,
    read_her2st_section,
)

EXPECTED = {"B4": 283, "C2": 187, "C3": 180, "C4": 184}


def test_sections_listed_and_imaged():
    names = list_her2st_sections(HER2ST_DIR)
    assert len(names) == 36 and names[0] == "A1" and names[-1] == "H3"
    assert list_her2st_sections(HER2ST_DIR, with_images_only=True) == sorted(EXPECTED)


@pytest.mark.parametrize("section", sorted(EXPECTED))
def test_imaged_section_contract(section):
    a = read_her2st_section(HER2ST_DIR, section)
    assert a.n_obs == EXPECTED[section]
    assert list(a.obs.columns) == OBS_COLUMNS
    assert sp.issparse(a.X) and isinstance(a.X, sp.csr_matrix)
    assert a.var_names.is_unique and "ERBB2" in a.var_names
    assert (a.obs["section"] == section).all() and (a.obs["patient"] == section[0]).all()
    assert list(a.obs_names) == list(a.obs["spot_id"])
    assert a.obs["array_x"].dtype.kind == "i" and a.obs["array_y"].dtype.kind == "i"
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["pixel_x", "pixel_y"]].to_numpy())
    md = a.uns["spatial"][section]["metadata"]
    assert md["image_path"].endswith(".jpg") and md["has_image"]
    assert 0.5 < md["microns_per_pixel"] < 0.9  # ST pitch 200 µm over ≈ 290 px
    # the counts index is "{x}x{y}" of the rounded array coordinates
    assert all(
        s == f"{x}x{y}" for s, x, y in zip(a.obs["spot_id"], a.obs["array_x"], a.obs["array_y"])
    )


def test_expression_only_sections_are_reported(caplog):
    with caplog.at_level("WARNING", logger="mclstexp_hub.data.readers.her2st"):
        a1, b4 = read_her2st(HER2ST_DIR, ["A1", "B4"])
    assert a1.n_obs == 346 and b4.n_obs == 283
    assert "expression only" in caplog.text and "A1" in caplog.text and "B4" not in caplog.text


def test_build_refuses_section_without_image(tmp_path):
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.errors import DataError

    with pytest.raises(DataError, match="A1.*no full-resolution image"):
        build_dataset(
            "her2st",
            HER2ST_DIR,
            tmp_path / "ds",
            sections=["A1"],
            genes_file=GENE_LISTS / "her2st_785.txt",
            progress=False,
        )
    assert not (tmp_path / "ds").exists()


def test_expression_only_section_with_labels():
    a = read_her2st_section(HER2ST_DIR, "A1")
    md = a.uns["spatial"]["A1"]["metadata"]
    assert md["image_path"] is None and md["has_image"] is False
    labels = set(a.obs["label"])
    assert "invasive cancer" in labels and "" not in labels  # every A1 spot is labelled
    b4 = read_her2st_section(HER2ST_DIR, "B4")
    assert set(b4.obs["label"]) == {""}  # no label file for B4


def test_published_panel_and_zero_total_spots():
    panel = read_gene_panel(GENE_LISTS / "her2st_785.txt")
    assert len(panel) == 785
    adatas = read_her2st(HER2ST_DIR, sorted(EXPECTED))
    out = preprocess_sections(adatas, panel)
    for a, p in zip(adatas, out, strict=True):
        assert list(p.var_names) == panel and p.X.dtype == np.float32
        assert (
            np.isfinite(p.X).all() and p.X.min() >= 0 and p.X.max() <= np.float32(np.log10(1e4 + 1))
        )
        counts = p.layers["counts"]
        np.testing.assert_array_equal(counts, a[:, panel].X.toarray())
        zero = counts.sum(axis=1) == 0
        assert (p.X[zero] == 0).all()
        assert p.uns["mclstexp_preprocessing"]["units"] == "log10(1 + 1e4 * count / panel total)"
        assert p.uns["mclstexp_preprocessing"]["zero_total_spots"] == list(p.obs_names[zero])
    # GUIDE: one or two spots per HER2+ section have a panel total of 0
    assert sum(len(p.uns["mclstexp_preprocessing"]["zero_total_spots"]) for p in out) >= 1


def test_build_refuses_silent_spot_drop_c3(tmp_path):
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.errors import DataError

    with pytest.raises(DataError, match=r"section C3: 2 spot\(s\).*--allow-dropped-spots"):
        build_dataset("her2st", HER2ST_DIR, tmp_path / "ds", sections=["C3"],
                      genes_file=GENE_LISTS / "her2st_785.txt", progress=False)
    assert not (tmp_path / "ds").exists()


def test_build_load_round_trip_c3(tmp_path):
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset

    out = build_dataset(
        "her2st",
        HER2ST_DIR,
        tmp_path / "ds",
        sections=["C3"],
        genes_file=GENE_LISTS / "her2st_785.txt",
        allow_dropped_spots=True,  # C3's spot file has 2 spots without a counts row
        progress=False,
    )
    meta = load_dataset_metadata(out)
    assert meta["n_spots"] == {"C3": 180} and meta["transform"] == "log10_cp10k_panel"
    drop = meta["per_section"]["C3"]["dropped_spots"]
    assert (drop["spots_without_counts"], drop["counts_without_spot"]) == (2, 0)
    assert (out / "genes.txt").read_text().split() == meta["gene_names"]
    assert "config_name: her2st" in (out / "README.md").read_text()
    ds = load_st_dataset(out, cache_dir=tmp_path / "cache")
    assert ds.num_rows == 180

    section = read_her2st_section(HER2ST_DIR, "C3")
    prep = preprocess_sections([section], read_gene_panel(GENE_LISTS / "her2st_785.txt"))[0]
    np.testing.assert_array_equal(np.array(ds["expression"], dtype=np.float32), prep.X)
    np.testing.assert_array_equal(
        np.array(ds["position"]), prep.obs[["array_x", "array_y"]].to_numpy()
    )
    np.testing.assert_array_equal(
        np.array(ds["pixel_center"], dtype=np.float32), prep.obsm["spatial"].astype(np.float32)
    )
    assert ds["spot_id"] == list(prep.obs_names)
    patches = extract_patches(prep)
    for i in (0, 57, 179):
        np.testing.assert_array_equal(np.asarray(ds[i]["image"]), patches[i])
