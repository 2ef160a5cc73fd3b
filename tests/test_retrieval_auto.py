"""Exact search up to a bank size, a tuned FAISS IVF index above it (`retrieval.auto`)."""

from __future__ import annotations

import json
import shutil
import warnings

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from mclstexp_hub.cli import main
from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank
from mclstexp_hub.retrieval import FaissSpotIndex, auto, recall_at_k


def _clustered_bank(n: int = 6000, dim: int = 32, n_genes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(60, dim, generator=g)
    emb = centres[torch.randint(0, 60, (n,), generator=g)] + 0.4 * torch.randn(n, dim, generator=g)
    expr = torch.rand(n, n_genes, generator=g)
    queries = centres[torch.randint(0, 60, (50,), generator=g)] + 0.4 * torch.randn(50, dim, generator=g)
    return SpotBank(emb, expr, [f"G{i}" for i in range(n_genes)]), queries


@pytest.fixture(scope="module")
def bank_and_queries():
    return _clustered_bank()


def test_exact_at_or_below_the_threshold(bank_and_queries, monkeypatch):
    bank, _ = bank_and_queries
    monkeypatch.setattr(auto, "EXACT_MAX_SPOTS", len(bank))
    searcher, report = auto.build_searcher(bank, 20)
    assert searcher is None
    assert report["kind"] == "exact" and report["recall_at_k"] == 1.0
    assert report["n_spots"] == len(bank)


def test_ivf_above_the_threshold_reaches_the_target_and_serves_retrieve(bank_and_queries, monkeypatch):
    bank, queries = bank_and_queries
    monkeypatch.setattr(auto, "EXACT_MAX_SPOTS", 100)
    searcher, report = auto.build_searcher(bank, 20, target_recall=0.95, n_probes=200)
    assert isinstance(searcher, FaissSpotIndex) and searcher.kind == "ivf"
    assert report["kind"] == "ivf" and report["recall_met"]
    assert report["recall_at_k"] >= 0.95 and report["n_probes"] == 200
    assert 1 <= report["nprobe"] <= report["nlist"] and searcher.index.nprobe == report["nprobe"]
    assert report["build_s"] >= 0 and report["bank_fingerprint"].startswith("sha256:")
    # the smallest nprobe reaching the target: one less (if tried) falls short
    curve = dict(report["nprobe_curve"])
    assert curve[report["nprobe"]] >= 0.95
    assert all(r < 0.95 for p, r in curve.items() if p < report["nprobe"])
    # SpotBank.retrieve uses it: its neighbours are the index's
    calls = []
    original = searcher.search

    def spy(q, k):
        calls.append(k)
        return original(q, k)

    monkeypatch.setattr(searcher, "search", spy)
    expr, idx, weights = bank.retrieve(queries, 20, searcher=searcher)
    assert calls == [20]
    assert torch.equal(idx, original(queries, 20)[1])
    assert expr.shape == (len(queries), bank.n_genes) and torch.allclose(weights.sum(1), torch.ones(len(queries)))
    # and it agrees well with exact search on these (clustered) queries
    _, exact = bank.search(queries, 20)
    assert recall_at_k(exact.numpy(), idx.numpy()) >= 0.8


def test_kind_exact_and_ivf_force_the_choice(bank_and_queries):
    bank, _ = bank_and_queries
    assert auto.build_searcher(bank, 10, kind="exact")[0] is None
    searcher, report = auto.build_searcher(bank, 10, kind="ivf", n_probes=100)
    assert searcher is not None and report["kind"] == "ivf"
    with pytest.raises(ValueError, match="index kind"):
        auto.build_searcher(bank, 10, kind="hnsw")


def test_save_load_round_trip_and_stale_index_is_ignored(bank_and_queries, tmp_path):
    bank, queries = bank_and_queries
    searcher, report = auto.build_searcher(bank, 20, kind="ivf", n_probes=100)
    written = auto.save_searcher(tmp_path, searcher, report)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == [auto.INDEX_FILENAME, auto.REPORT_FILENAME]
    loaded, loaded_report = auto.load_searcher(tmp_path, bank)
    assert loaded is not None and loaded_report == json.loads(json.dumps(report))
    assert loaded.index.nprobe == report["nprobe"]
    assert torch.equal(loaded.search(queries, 20)[1], searcher.search(queries, 20)[1])

    # same size, different embeddings: the fingerprint catches it
    changed = SpotBank(bank.embeddings + 0.01, bank.expression, bank.gene_names)
    with pytest.warns(UserWarning, match="stale.*changed"):
        assert auto.load_searcher(tmp_path, changed) == (None, None)
    # another size
    smaller = SpotBank(bank.embeddings[:-1], bank.expression[:-1], bank.gene_names)
    with pytest.warns(UserWarning, match="stale.*spots"):
        assert auto.load_searcher(tmp_path, smaller) == (None, None)
    # a model with the changed bank gets exact search
    class _Model:
        spot_bank = changed
        spot_searcher = None

    model = _Model()
    with pytest.warns(UserWarning, match="stale"):
        info = auto.attach_saved_searcher(model, tmp_path)
    assert info == {"retrieval_search": "exact"} and model.spot_searcher is None
    # saving "exact" removes the index files
    assert auto.save_searcher(tmp_path, None, {"kind": "exact"}) == []
    assert not (tmp_path / auto.INDEX_FILENAME).exists()
    assert auto.load_searcher(tmp_path, bank) == (None, None)


def test_corrupt_index_is_ignored_with_a_warning(tmp_path, bank_and_queries):
    bank, _ = bank_and_queries
    (tmp_path / auto.INDEX_FILENAME).write_bytes(b"not faiss")
    (tmp_path / auto.REPORT_FILENAME).write_text(json.dumps({"format": auto.REPORT_FORMAT}))
    with pytest.warns(UserWarning, match="ignoring"):
        assert auto.load_searcher(tmp_path, bank) == (None, None)


def test_bank_build_index_auto_then_predict_uses_it(synthetic, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic.checkpoint, ckpt)
    monkeypatch.setattr(auto, "EXACT_MAX_SPOTS", 10)
    code = main(["bank", "build", str(ckpt), "--dataset", str(synthetic.dataset), "--quiet",
                 "--index", "auto"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "measured recall@" in out
    report = json.loads((ckpt / auto.REPORT_FILENAME).read_text())
    assert (ckpt / auto.INDEX_FILENAME).is_file()
    assert report["kind"] == "ivf" and report["recall_at_k"] >= 0.95
    assert report["n_spots"] == synthetic.n_bank_spots and report["k"] == synthetic.retrieval_k

    calls = []
    original = FaissSpotIndex.search

    def spy(self, q, k):
        calls.append((len(q), k))
        return original(self, q, k)

    monkeypatch.setattr(FaissSpotIndex, "search", spy)
    pred = tmp_path / "pred.h5ad"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["predict", "--model", str(ckpt), "--image", str(synthetic.image), "--spots",
                     str(synthetic.spots_csv), "--out", str(pred), "--device", "cpu", "--quiet"])
    assert not [w for w in caught if "spot-bank index" in str(w.message)]  # valid: used
    assert code == 0, capsys.readouterr().err
    assert calls and all(k == synthetic.retrieval_k for _, k in calls)
    info = ad.read_h5ad(pred).uns["mclstexp"]
    assert str(info["retrieval_search"]).startswith("faiss ivf")
    assert float(info["retrieval_index_recall_at_k"]) == pytest.approx(report["recall_at_k"])

    # rebuilding with --index exact removes the index; predict then searches exactly
    assert main(["bank", "build", str(ckpt), "--dataset", str(synthetic.dataset), "--quiet",
                 "--index", "exact"]) == 0
    assert not (ckpt / auto.INDEX_FILENAME).exists()
    calls.clear()
    pred2 = tmp_path / "pred2.h5ad"
    assert main(["predict", "--model", str(ckpt), "--image", str(synthetic.image), "--spots",
                 str(synthetic.spots_csv), "--out", str(pred2), "--device", "cpu", "--quiet"]) == 0
    assert not calls
    assert ad.read_h5ad(pred2).uns["mclstexp"]["retrieval_search"] == "exact"
    np.testing.assert_allclose(ad.read_h5ad(pred2).X, ad.read_h5ad(pred).X, rtol=1e-4, atol=1e-5)
