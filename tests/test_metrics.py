"""Evaluation metrics against scipy and by hand; reports and figures are written whole."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mclstexp_hub.evaluation import (
    average_metrics,
    evaluate_section,
    pearson_per_gene,
    top_genes,
)
from mclstexp_hub.evaluation.report import write_section_reports


def _data(n_spots=60, n_genes=80, seed=0):
    rng = np.random.default_rng(seed)
    observed = rng.gamma(2.0, 0.5, size=(n_spots, n_genes)) * rng.uniform(0.1, 3, n_genes)
    predicted = observed + rng.normal(0, 1.0, size=observed.shape)
    genes = [f"gene{j}" for j in range(n_genes)]
    return predicted, observed, genes


def test_pearson_matches_scipy_including_pvalues():
    predicted, observed, _ = _data()
    r, p = pearson_per_gene(predicted, observed)
    for j in range(observed.shape[1]):
        ref = stats.pearsonr(predicted[:, j], observed[:, j])
        assert r[j] == pytest.approx(ref.statistic, abs=1e-12)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


def test_pearson_tiny_and_huge_scales_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 2)) * np.array([1e-6, 1e6])
    y = x + rng.normal(size=(30, 2)) * np.array([1e-6, 1e6])
    r, _ = pearson_per_gene(x, y)
    for j in range(2):
        assert r[j] == pytest.approx(stats.pearsonr(x[:, j], y[:, j]).statistic, abs=1e-10)


def test_constant_genes_are_nan_dropped_and_counted():
    predicted, observed, genes = _data()
    predicted[:, 3] = 0.7  # constant prediction
    observed[:, 10] = 0.0  # gene never observed in this section
    m = evaluate_section(predicted, observed, genes, section="S1", n_top=10)
    assert np.isnan(m.per_gene.loc[3, "pearson_r"]) and np.isnan(m.per_gene.loc[10, "p_value"])
    assert m.n_nan_genes == 2 and m.nan_genes == ["gene3", "gene10"]
    r = np.array([stats.pearsonr(predicted[:, j], observed[:, j]).statistic
                  for j in range(len(genes)) if j not in (3, 10)])
    assert m.pcc_acg == pytest.approx(r.mean(), abs=1e-12)


def test_heg_hvg_selection_and_means():
    predicted, observed, genes = _data()
    m = evaluate_section(predicted, observed, genes, n_top=12)
    heg = np.argsort(-observed.mean(0))[:12]
    hvg = np.argsort(-observed.var(0))[:12]
    assert m.heg_genes == [genes[j] for j in heg]
    assert m.hvg_genes == [genes[j] for j in hvg]
    r = np.array([stats.pearsonr(predicted[:, j], observed[:, j]).statistic
                  for j in range(len(genes))])
    assert m.pcc_heg == pytest.approx(r[heg].mean(), abs=1e-12)
    assert m.pcc_hvg == pytest.approx(r[hvg].mean(), abs=1e-12)
    assert m.per_gene["is_heg"].sum() == 12 and m.per_gene["is_hvg"].sum() == 12
    assert list(top_genes(observed, 500, "mean")) == list(np.argsort(-observed.mean(0)))


def test_mse_mae_over_all_genes_and_spots():
    predicted, observed, genes = _data()
    m = evaluate_section(predicted, observed, genes)
    assert m.mse == pytest.approx(((predicted - observed) ** 2).mean())
    assert m.mae == pytest.approx(np.abs(predicted - observed).mean())
    assert m.n_spots == 60 and m.n_genes == 80 and m.n_top == 50


def test_average_over_sections():
    results = []
    for seed in range(3):
        p, o, g = _data(seed=seed)
        results.append(evaluate_section(p, o, g, section=f"S{seed}"))
    mean = average_metrics(results)
    assert mean["n_sections"] == 3
    for name in ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae"):
        values = [getattr(r, name) for r in results]
        assert mean[name] == pytest.approx(np.mean(values))
        assert mean[f"{name}_std"] == pytest.approx(np.std(values, ddof=1))


def test_bad_input_is_refused_with_a_reason():
    predicted, observed, genes = _data()
    with pytest.raises(ValueError, match="empty section"):
        evaluate_section(predicted[:0], observed[:0], genes, section="B4")
    bad = predicted.copy()
    bad[5, 7] = np.nan
    with pytest.raises(ValueError, match="NaN/inf.*gene7"):
        evaluate_section(bad, observed, genes)
    with pytest.raises(ValueError, match="Gene lists differ"):
        evaluate_section(predicted, observed, genes, predicted_genes=genes[::-1])
    with pytest.raises(ValueError, match="absent from the truth"):
        evaluate_section(predicted, observed, genes, predicted_genes=genes[:-1] + ["XIST"])
    with pytest.raises(ValueError, match="same"):
        evaluate_section(predicted[:, :5], observed, genes)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_section(predicted[:1], observed[:1], genes)


def test_reports_are_complete_and_json_has_no_nan(tmp_path):
    predicted, observed, genes = _data()
    predicted[:, 0] = 1.0
    m = evaluate_section(predicted, observed, genes, section="B4")
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 30, size=(observed.shape[0], 2))
    paths = write_section_reports(
        [m], tmp_path, prefix="mclstexp_", maps={"B4": (positions, observed, predicted)},
        extra={"model": "x"},
    )
    payload = json.loads((tmp_path / "mclstexp_metrics.json").read_text())  # strict JSON
    assert payload["per_section"][0]["pcc_acg"] == pytest.approx(m.pcc_acg)
    assert payload["mean"]["n_nan_genes"] == 1 and payload["model"] == "x"
    table = pd.read_csv(tmp_path / "mclstexp_per_gene.csv")
    assert len(table) == len(genes) and np.isnan(table.loc[0, "pearson_r"])
    metrics = pd.read_csv(tmp_path / "mclstexp_metrics.csv")
    assert list(metrics["section"]) == ["B4", "mean"]
    for key in ("r_distribution_png", "gene_maps_B4"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))
