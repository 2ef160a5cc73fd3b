"""The optional FAISS index: flat equals exact search, IVF/HNSW recall, persistence, errors."""

from __future__ import annotations

import builtins
import itertools

import numpy as np
import pytest
import torch

from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

pytest.importorskip("faiss", reason="faiss not installed: pip install 'mclstexp-hub[faiss]'")

DISTANCES = ("l1", "l2", "cosine")
WEIGHTINGS = ("inverse_square", "mean", "softmax")



def test_faiss_flat_equals_exact_search(random_bank):
    from mclstexp_hub.retrieval import FaissSpotIndex

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "flat")
    sims, idx = index.search(queries, 20)
    ref_sims, ref_idx = bank.search(queries, 20)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
    np.testing.assert_allclose(sims.numpy(), ref_sims.numpy(), atol=1e-5)


@pytest.mark.parametrize(("distance", "weighting"), list(itertools.product(DISTANCES, WEIGHTINGS)))
def test_predict_with_flat_index_equals_bank_predict(random_bank, distance, weighting):
    from mclstexp_hub.retrieval import FaissSpotIndex, predict_with_index

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "flat")
    ours = predict_with_index(bank, index, queries, 9, distance, weighting, query_chunk=4)
    ref = bank.predict(queries, 9, distance=distance, weighting=weighting)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_ivf_scanning_every_cell_is_exact(random_bank):
    from mclstexp_hub.retrieval import FaissSpotIndex, recall_at_k

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "ivf", nlist=4, nprobe=4)
    _, idx = index.search(queries, 15)
    _, ref_idx = bank.search(queries, 15)
    assert recall_at_k(ref_idx, idx) == 1.0
    index.set_search_params(nprobe=1)  # one of four cells: approximate, still valid rows
    assert index.params["nprobe"] == 1


def test_hnsw_recall_is_high_on_small_bank(random_bank):
    from mclstexp_hub.retrieval import FaissSpotIndex, recall_at_k

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "hnsw", ef_search=200)
    _, idx = index.search(queries, 10)
    _, ref_idx = bank.search(queries, 10)
    assert idx.shape == ref_idx.shape
    assert recall_at_k(ref_idx, idx) > 0.9


def test_index_save_load_roundtrip(tmp_path, random_bank):
    from mclstexp_hub.retrieval import FaissSpotIndex

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "ivf", nlist=4, nprobe=4)
    loaded = FaissSpotIndex.load(index.save(tmp_path / "bank.faiss"))
    assert loaded.kind == "ivf" and len(loaded) == len(bank) and loaded.params["nprobe"] == 4
    a = index.search(queries, 5)
    b = loaded.search(queries, 5)
    torch.testing.assert_close(a[1], b[1])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_faiss_bad_input(random_bank):
    from mclstexp_hub.retrieval import FaissSpotIndex, predict_with_index

    bank, queries = random_bank
    index = FaissSpotIndex.from_bank(bank, "flat")
    with pytest.raises(ValueError, match="larger than the indexed bank"):
        index.search(queries, len(bank) + 1)
    with pytest.raises(ValueError, match="match the index"):
        index.search(torch.randn(2, 5), 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        FaissSpotIndex.from_bank(bank, "lsh")
    other = SpotBank(torch.randn(10, 16), torch.rand(10, bank.n_genes), list(bank.gene_names))
    with pytest.raises(ValueError, match="not built from this bank"):
        predict_with_index(other, index, queries, 3)
    q = queries.clone()
    q[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        index.search(q, 3)


def test_recall_at_k():
    from mclstexp_hub.retrieval import recall_at_k

    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[3, 2, 1], [4, 9, 8]]) == pytest.approx(4 / 6)


def test_missing_faiss_names_the_extra(monkeypatch):
    from mclstexp_hub.retrieval import import_faiss

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"mclstexp-hub\[faiss\]"):
        import_faiss()
