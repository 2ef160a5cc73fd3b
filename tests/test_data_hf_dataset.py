"""Build → load round trip of patch datasets (local folder, Hub cache, streaming), the CLI,
atomic failure and pushing."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
from data_fixtures import GENES, write_st_section, write_visium_outs

from mclstexp_hub.data.build import build_dataset
from mclstexp_hub.data.errors import DataError
from mclstexp_hub.data.hf_dataset import (
    load_dataset_metadata,
    load_st_dataset,
    push_st_dataset,
    resolve_dataset_dir,
)
from mclstexp_hub.data.patches import extract_patches
from mclstexp_hub.data.preprocess import preprocess_sections
from mclstexp_hub.data.readers import read_cscc


@pytest.fixture()
def cscc_dir(tmp_path):
    raw = tmp_path / "raw"
    write_st_section(raw, "P2_ST_rep1", seed=0)
    write_st_section(raw, "P5_ST_rep2", gsm="GSM0000002", seed=7)
    return raw


@pytest.fixture()
def built(cscc_dir, tmp_path):
    panel = tmp_path / "panel.txt"
    panel.write_text("GENE_C\nGENE_A\nGENE_F\nGENE_B\n")
    out = build_dataset(
        "cscc", cscc_dir, tmp_path / "ds", genes_file=panel, patch_size=64, progress=False
    )
    return out, panel


def _expected(cscc_dir, panel_genes, patch_size=64):
    prep = preprocess_sections(read_cscc(cscc_dir), panel_genes)
    return prep, [extract_patches(p, patch_size=patch_size) for p in prep]


def test_round_trip_exact(built, cscc_dir, tmp_path):
    out, _ = built
    meta = load_dataset_metadata(out)
    assert meta["gene_names"] == ["GENE_C", "GENE_A", "GENE_F", "GENE_B"]
    assert meta["sections"] == ["P2_ST_rep1", "P5_ST_rep2"]
    assert meta["patients"] == {"P2_ST_rep1": "P2", "P5_ST_rep2": "P5"}
    assert meta["units"] == "log10(1 + 1e4 * count / panel total)" and meta["patch_size"] == 64
    assert (
        "GSE144240" in meta["license"]
        and (out / "genes.txt").read_text().split() == meta["gene_names"]
    )
    ds = load_st_dataset(out, cache_dir=tmp_path / "cache")
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 24
    assert ds.features["expression"].length == 4 and isinstance(
        ds.features["image"], datasets.Image
    )
    prep, patches = _expected(cscc_dir, meta["gene_names"])
    X = np.concatenate([p.X for p in prep])
    np.testing.assert_array_equal(np.array(ds["expression"], dtype=np.float32), X)
    pos = np.concatenate([p.obs[["array_x", "array_y"]].to_numpy() for p in prep])
    np.testing.assert_array_equal(np.array(ds["position"]), pos)
    assert ds["section"] == ["P2_ST_rep1"] * 12 + ["P5_ST_rep2"] * 12
    assert ds["patient"][0] == "P2" and ds["label"][0] == ""
    all_patches = np.concatenate(patches)
    for i, row in enumerate(ds):
        np.testing.assert_array_equal(np.asarray(row["image"]), all_patches[i])


def test_plain_load_dataset_reads_card_config(built, tmp_path):
    out, _ = built
    ds = datasets.load_dataset(str(out), "cscc", split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == 24 and ds.features["position"].length == 2


def test_streaming_and_section_filter(built, cscc_dir):
    out, _ = built
    stream = load_st_dataset(out, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    assert len(rows) == 24 and rows[13]["section"] == "P5_ST_rep2"
    only = load_st_dataset(out, streaming=True, sections=["P5_ST_rep2"])
    rows5 = list(only)
    assert [r["spot_id"] for r in rows5] == [r["spot_id"] for r in rows[12:]]
    np.testing.assert_array_equal(np.asarray(rows5[3]["image"]), np.asarray(rows[15]["image"]))
    with pytest.raises(DataError, match="P9_ST_rep1"):
        load_st_dataset(out, sections=["P9_ST_rep1"])


def test_load_from_hub_cache_offline(built, tmp_path):
    out, _ = built
    cache = tmp_path / "hub"
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "datasets--someorg--cscc-patches"
    shutil.copytree(out, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    root = resolve_dataset_dir("someorg/cscc-patches", cache_dir=cache, local_files_only=True)
    assert root == repo / "snapshots" / sha
    ds = load_st_dataset("someorg/cscc-patches", cache_dir=cache, local_files_only=True)
    assert ds.num_rows == 24
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        load_st_dataset(tmp_path / "missing" / "folder")


def test_failure_leaves_nothing_behind(cscc_dir, tmp_path):
    spots = next(cscc_dir.glob("*selection-P5_ST_rep2.tsv"))
    text = spots.read_text().splitlines()
    fields = text[-1].split("\t")
    fields[4] = "99999.0"  # last spot of the second section far outside its image
    spots.write_text("\n".join(text[:-1] + ["\t".join(fields)]) + "\n")
    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join(GENES) + "\n")
    with pytest.raises(DataError, match="outside the 700×600 image: 4x3"):
        build_dataset("cscc", cscc_dir, tmp_path / "ds", genes_file=panel, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panel.txt", "raw"]


def test_overwrite_and_existing_output(built, cscc_dir, tmp_path):
    out, panel = built
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_dataset("cscc", cscc_dir, out, genes_file=panel, progress=False)
    build_dataset(
        "cscc",
        cscc_dir,
        out,
        genes_file=panel,
        patch_size=32,
        overwrite=True,
        sections=["P5_ST_rep2"],
        progress=False,
        transform="ln_cpm_panel",
    )
    meta = load_dataset_metadata(out)
    assert meta["sections"] == ["P5_ST_rep2"] and meta["patch_size"] == 32
    assert meta["transform"] == "ln_cpm_panel"
    assert not (out / "data" / "cscc" / "P2_ST_rep1.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "panel.txt", "raw"]


def test_cli_visium_build(tmp_path, capsys):
    from mclstexp_hub.cli import main

    f = write_visium_outs(tmp_path / "sampleV", image_format="pyramid")
    panel = tmp_path / "panel.txt"
    panel.write_text("GENE_B\nGENE_A\nNOT_THERE\n")
    args = [
        "data",
        "build",
        "visium",
        "--data-dir",
        str(f["outs"]),
        "--out",
        str(tmp_path / "v"),
        "--image",
        str(f["image"]),
        "--genes",
        str(panel),
        "--patch-size",
        "32",
        "--quiet",
    ]
    assert main(args) == 2
    assert "NOT_THERE" in capsys.readouterr().err and not (tmp_path / "v").exists()
    assert main(args + ["--fill-missing-genes", "--target-mpp", "2.0"]) == 0
    meta = json.loads((tmp_path / "v" / "mclstexp_dataset.json").read_text())
    sec = meta["per_section"]["sampleV"]
    assert sec["missing_genes_filled"] == ["NOT_THERE"] and sec["window_px"] == 64
    assert meta["target_mpp"] == 2.0 and meta["resampling"] == "PIL Lanczos"
    ds = load_st_dataset(tmp_path / "v", cache_dir=tmp_path / "cache")
    assert ds.num_rows == 12 and np.asarray(ds[0]["image"]).shape == (32, 32, 3)
    assert (np.array(ds["expression"])[:, 2] == 0).all()
    assert (
        main(
            ["data", "build", "visium", "--data-dir", str(f["outs"]), "--out", str(tmp_path / "w")]
        )
        == 2
    )
    assert "--image" in capsys.readouterr().err


def test_push_uploads_built_folder(built, monkeypatch):
    from huggingface_hub import HfApi

    out, _ = built
    calls = {}
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw))
    )

    def fake_commit(self, repo_id, operations, **kw):
        calls["files"] = sorted(op.path_in_repo for op in operations)
        calls["readme"] = next(op for op in operations if op.path_in_repo == "README.md")
        calls["kw"] = kw
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_commit", fake_commit)
    assert push_st_dataset(out, "org/name") == "commit-info"
    assert calls["repo"][1]["repo_type"] == "dataset" and calls["kw"]["repo_type"] == "dataset"
    assert calls["files"] == [
        "README.md",
        "data/cscc/P2_ST_rep1.parquet",
        "data/cscc/P5_ST_rep2.parquet",
        "genes.txt",
        "mclstexp_dataset.json",
    ]
    assert calls["readme"].path_or_fileobj == str(out / "README.md")


def test_card_metadata_parses(built):
    from huggingface_hub import DatasetCard

    out, _ = built
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other"
    assert card.data.configs == [
        {
            "config_name": "cscc",
            "data_files": [{"split": "train", "path": "data/cscc/*.parquet"}],
            "default": True,
        }
    ]
    assert "log10(1 + 1e4 * count / panel total)" in card.text
