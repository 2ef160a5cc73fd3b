"""Spatial domains: PCA → k-means against real pathologist regions, label reading, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_pipeline_helpers import section_expression

from mclstexp_hub.analysis.domains import domain_scores, read_labels, spatial_domains
from mclstexp_hub.cli import main
from mclstexp_hub.models.mclstexp.pipeline_mclstexp import build_prediction_anndata


@pytest.fixture(scope="module")
def b1(her2st_dir, her2st_panel):
    """HER2+ B1: 295 spots, pathologist labels (no image here, so expression only)."""
    return section_expression(her2st_dir, "B1", her2st_panel)


@pytest.fixture(scope="module")
def b1_prediction_file(tmp_path_factory, b1):
    """B1's observed expression laid out as a prediction file (blank thumbnail)."""
    spots = pd.DataFrame({"spot_id": b1.obs_names.astype(str),
                          "pixel_x": b1.obs["pixel_x"].to_numpy(),
                          "pixel_y": b1.obs["pixel_y"].to_numpy()})
    width = int(spots.pixel_x.max()) + 300
    height = int(spots.pixel_y.max()) + 300
    scale = 500 / max(width, height)
    thumb = np.full((round(height * scale), round(width * scale), 3), 235, dtype=np.uint8)
    adata = build_prediction_anndata(np.asarray(b1.X), list(b1.var_names), spots, thumb, scale,
                                     160.0, "B1", {"units": "log10 CP10k panel"})
    path = tmp_path_factory.mktemp("dom") / "b1_pred.h5ad"
    adata.write_h5ad(path)
    return path


def test_domains_of_real_expression_match_pathologist_regions(b1):
    labels = b1.obs["label"].to_numpy()
    k = len(set(labels) - {"", "undetermined"})
    clusters = spatial_domains(np.asarray(b1.X), k)
    assert sorted(set(clusters)) == list(range(k))
    scores = domain_scores(clusters, labels)
    shuffled = domain_scores(np.random.default_rng(0).permutation(clusters), labels)
    assert scores["n_labelled"] == int((~np.isin(labels, ["", "undetermined"])).sum())
    assert scores["ari"] > 0.2 and scores["nmi"] > 0.2  # measured 0.33 / 0.38
    assert abs(shuffled["ari"]) < 0.05
    assert np.array_equal(clusters, spatial_domains(np.asarray(b1.X), k))  # seeded


def test_labels_by_obs_key_spot_id_and_pixel_coordinates(b1_prediction_file, her2st_dir, b1,
                                                         tmp_path):
    adata = ad.read_h5ad(b1_prediction_file)
    adata.obs["given"] = b1.obs["label"].to_numpy()
    values, source = read_labels("given", adata)
    assert source == "obs['given']" and list(values) == list(b1.obs["label"])
    pd.DataFrame({"spot_id": b1.obs_names[:10], "label": ["x"] * 10}).to_csv(tmp_path / "l.csv",
                                                                             index=False)
    values, _ = read_labels(str(tmp_path / "l.csv"), adata)
    assert list(values[:10]) == ["x"] * 10 and set(values[10:]) == {""}
    # her2st's own label table: matched by array position (its pixels are another frame)
    lbl = Path(her2st_dir) / "ST-pat" / "lbl" / "B1_labeled_coordinates.tsv"
    values, source = read_labels(str(lbl), adata)
    assert "array position" in source
    assert list(values) == list(b1.obs["label"])  # as the HER2+ reader joins them
    # a table of full-resolution pixel centres: nearest spot within half a diameter
    pd.DataFrame({"pixel_x": b1.obs["pixel_x"][:5] + 20, "pixel_y": b1.obs["pixel_y"][:5],
                  "label": list("abcde")}).to_csv(tmp_path / "px.csv", index=False)
    values, source = read_labels(str(tmp_path / "px.csv"), adata)
    assert "nearest labelled point within 80 px" in source
    assert list(values[:5]) == list("abcde") and set(values[5:]) == {""}
    with pytest.raises(FileNotFoundError, match="neither a column"):
        read_labels("nonexistent_key", adata)


def test_domains_cli_writes_map_table_and_scores(b1_prediction_file, her2st_dir, capsys):
    lbl = Path(her2st_dir) / "ST-pat" / "lbl" / "B1_labeled_coordinates.tsv"
    out_dir = b1_prediction_file.parent / "domains"
    argv = ["domains", str(b1_prediction_file), "--n-clusters", "4", "--labels", str(lbl),
            "--out-dir", str(out_dir)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out_dir / "b1_pred_domains.json").read_text())
    assert report["scores"]["ari"] > 0.2 and f"ARI = {report['scores']['ari']:.3f}" in stdout
    assert sum(report["cluster_sizes"].values()) == 295
    table = pd.read_csv(out_dir / "b1_pred_domains.csv")
    assert list(table.columns) == ["spot_id", "mclstexp_domain", "region_label"] and len(table) == 295
    assert (out_dir / "b1_pred_domains.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 2  # outputs exist: refused without --overwrite
    assert "already exist" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_bad_domain_requests(b1):
    with pytest.raises(ValueError, match=">= 2"):
        spatial_domains(np.asarray(b1.X), 1)
    with pytest.raises(ValueError, match="cannot form"):
        spatial_domains(np.asarray(b1.X)[:3], 4)
    with pytest.raises(ValueError, match="fewer than 2 spots"):
        domain_scores(np.zeros(5, int), np.array(["undetermined"] * 5))
