"""Gene panels, the HVG recipe and the expression transforms."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mclstexp_hub.data.errors import DataError
from mclstexp_hub.data.preprocess import (
    TRANSFORMS,
    normalize_expression,
    preprocess_sections,
    read_gene_panel,
    select_genes,
)


def _section(name, genes, counts):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)))
    a.var_names = genes
    a.obs_names = [f"{name}_{i}" for i in range(a.n_obs)]
    a.obs["section"] = name
    return a


def test_transforms_match_formulas_and_zero_rows():
    counts = np.array([[1, 3, 0], [0, 0, 0], [5, 0, 5]], dtype=float)
    log10 = normalize_expression(counts, "log10_cp10k_panel")
    ln = normalize_expression(sp.csr_matrix(counts), "ln_cpm_panel")
    assert log10.dtype == np.float32 and ln.dtype == np.float32
    np.testing.assert_allclose(log10[0], np.log10(1 + 1e4 * np.array([0.25, 0.75, 0])), rtol=1e-6)
    np.testing.assert_allclose(ln[2], np.log1p(1e6 * np.array([0.5, 0, 0.5])), rtol=1e-6)
    assert (log10[1] == 0).all() and (ln[1] == 0).all() and np.isfinite(log10).all()
    with pytest.raises(DataError, match="transform"):
        normalize_expression(counts, "zscore")


def test_gene_panel_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# panel\nB\n\nA\nC\n")
    assert read_gene_panel(txt) == ["B", "A", "C"]
    npy = tmp_path / "p.npy"
    np.save(npy, np.array(["X", "Y"]))
    assert read_gene_panel(npy) == ["X", "Y"]
    txt.write_text("A\nB\nA\n")
    with pytest.raises(DataError, match="duplicate gene.*A"):
        read_gene_panel(txt)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_gene_panel(tmp_path / "nope.txt")


def test_panel_order_missing_genes_and_fill():
    a = _section("s1", ["A", "B", "C"], [[1, 2, 3], [0, 0, 0]])
    with pytest.raises(DataError, match=r"s1: 2 panel gene\(s\) absent.*Z1, Z2"):
        preprocess_sections([a], ["C", "Z1", "A", "Z2"])
    (p,) = preprocess_sections([a], ["C", "Z1", "A"], fill_missing=True, transform="ln_cpm_panel")
    assert list(p.var_names) == ["C", "Z1", "A"]
    np.testing.assert_array_equal(p.layers["counts"], [[3, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(p.X[0], np.log1p(1e6 * np.array([0.75, 0, 0.25])), rtol=1e-6)
    assert (p.X[1] == 0).all()
    info = p.uns["mclstexp_preprocessing"]
    assert info["transform"] == "ln_cpm_panel" and info["units"] == TRANSFORMS["ln_cpm_panel"]
    assert info["missing_genes_filled"] == ["Z1"] and info["zero_total_spots"] == ["s1_1"]


def test_recipe_shared_genes_hvg_and_min_spots():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(40)]
    sections = []
    for s in range(3):
        counts = rng.poisson(2.0, size=(200, 40)).astype(float)
        counts[:, :5] = rng.negative_binomial(0.2, 0.2 / 2.2, size=(200, 5))  # overdispersed
        counts[:, 5] = 0
        counts[:3, 5] = 50  # G5: variable but expressed in only 9 spots overall
        sections.append(pd.DataFrame(counts, columns=genes))
    adatas = [_section(f"s{i}", genes, df.to_numpy()) for i, df in enumerate(sections)]
    adatas[1] = adatas[1][:, [g for g in genes if g != "G1"]].copy()  # G1 not shared
    selected = select_genes(adatas, n_top=6, min_spots=100)
    assert "G1" not in selected and "G5" not in selected
    assert {"G0", "G2", "G3", "G4"} <= set(selected)
    with pytest.raises(DataError, match="min_spots"):
        select_genes(adatas, n_top=6, min_spots=10_000)
    (p, *_) = preprocess_sections(adatas, None, n_top=6, min_spots=100)
    assert list(p.var_names) == selected
    assert p.uns["mclstexp_preprocessing"]["gene_panel_source"].startswith("recipe")


class _TouchOnUnpickle:
    """Pickles to a call that would create a file if it were ever executed."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.target,))


def test_npy_gene_panel_object_array_reads_but_never_runs_pickles(tmp_path):
    import numpy as np
    import pytest

    from mclstexp_hub.data.preprocess import read_gene_panel

    good = tmp_path / "panel.npy"
    np.save(good, np.array(["TNC", "ERBB2", "GAPDH"], dtype=object), allow_pickle=True)
    assert read_gene_panel(good) == ["TNC", "ERBB2", "GAPDH"]

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([_TouchOnUnpickle(marker), "GAPDH"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="evil.npy.*not allowed"):
        read_gene_panel(evil)
    assert not marker.exists()
