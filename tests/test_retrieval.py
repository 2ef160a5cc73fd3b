"""Retrieval against a brute-force reference: exact search, weightings, the model path, FAISS."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mclstexp_hub import MclSTExpConfig, MclSTExpModel

DISTANCES = ("l1", "l2", "cosine")
WEIGHTINGS = ("inverse_square", "mean", "softmax")


def brute_force(bank_emb, bank_expr, queries, k, distance, weighting):
    """Independent float64 numpy reference: full similarity matrix, argsort, weights."""
    b = np.asarray(bank_emb, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)
    ).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    neigh = b[idx]  # (Q, k, D)
    if distance == "l1":
        d = np.abs(neigh - q[:, None, :]).sum(-1)
    elif distance == "l2":
        d = np.sqrt(((neigh - q[:, None, :]) ** 2).sum(-1))
    else:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        nn_ = neigh / np.linalg.norm(neigh, axis=2, keepdims=True)
        d = 1.0 - np.einsum("qd,qkd->qk", qn, nn_)
    if weighting == "mean":
        w = np.full(idx.shape, 1.0 / k)
    elif weighting == "inverse_square":
        w = 1.0 / np.maximum(d, 1e-8) ** 2
        w /= w.sum(1, keepdims=True)
    else:
        e = np.exp(-(d - d.min(1, keepdims=True)))
        w = e / e.sum(1, keepdims=True)
    pred = np.einsum("qk,qkg->qg", w, np.asarray(bank_expr, dtype=np.float64)[idx])
    return np.take_along_axis(sims, idx, axis=1), idx, w, pred


@pytest.fixture(scope="module")
def tiny_model(random_bank):
    bank, _ = random_bank
    config = MclSTExpConfig(
        gene_names=list(bank.gene_names), image_encoder="resnet10t", projection_dim=16, max_position=32,
        spot_encoder_heads=2, spot_encoder_head_dim=4, retrieval_k=5,
    )
    torch.manual_seed(0)
    model = MclSTExpModel(config).eval()
    model.attach_spot_bank(bank)
    return model


@pytest.mark.parametrize("chunk_size", [7, 65536])
def test_exact_search_matches_brute_force(random_bank, chunk_size):
    bank, queries = random_bank
    sims, idx = bank.search(queries, 12, chunk_size=chunk_size)
    ref_sims, ref_idx, _, _ = brute_force(bank.embeddings, bank.expression, queries, 12, "l1", "mean")
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), ref_sims, atol=1e-5)


@pytest.mark.parametrize(("distance", "weighting"), list(itertools.product(DISTANCES, WEIGHTINGS)))
def test_bank_predict_matches_brute_force(random_bank, distance, weighting):
    bank, queries = random_bank
    _, _, _, ref = brute_force(bank.embeddings, bank.expression, queries, 9, distance, weighting)
    chunked = bank.predict(queries, 9, distance=distance, weighting=weighting, chunk_size=11)
    whole = bank.predict(queries, 9, distance=distance, weighting=weighting)
    np.testing.assert_allclose(chunked.numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(whole.numpy(), chunked.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("distance", DISTANCES)
def test_retrieval_blocks_and_threads_do_not_change_the_answer(random_bank, monkeypatch, distance):
    """Query blocks of 1-3 queries spread over threads give the one-block answer (and brute force)."""
    from mclstexp_hub.models.mclstexp import retrieval_mclstexp as core

    bank, queries = random_bank
    args = (queries.numpy(), bank.embeddings.numpy(), bank.expression.numpy(), 9, distance,
            "inverse_square")
    whole = core.retrieve_arrays(*args, return_neighbour_spread=True)
    monkeypatch.setattr(core, "GATHER_BLOCK_BYTES", 2 * 9 * bank.n_genes * 4)  # 2 queries
    monkeypatch.setattr(core, "_threads", lambda: 3)
    blocked = core.retrieve_arrays(*args, return_neighbour_spread=True)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)
    _, ref_idx, ref_w, ref = brute_force(bank.embeddings, bank.expression, queries, 9, distance,
                                         "inverse_square")
    np.testing.assert_array_equal(blocked[1], ref_idx)
    np.testing.assert_allclose(blocked[2], ref_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(blocked[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("distance", "weighting"), list(itertools.product(DISTANCES, WEIGHTINGS)))
def test_model_predict_expression_from_embeddings(random_bank, tiny_model, distance, weighting):
    bank, queries = random_bank
    _, ref_idx, ref_w, ref = brute_force(
        bank.embeddings, bank.expression, queries, 9, distance, weighting
    )
    out = tiny_model.predict_expression(
        image_embeds=queries, k=9, distance=distance, weighting=weighting, chunk_size=13
    )
    np.testing.assert_array_equal(out.neighbour_indices.numpy(), ref_idx)
    np.testing.assert_allclose(out.neighbour_weights.numpy(), ref_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.expression.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_model_uses_config_defaults(random_bank, tiny_model):
    bank, queries = random_bank
    out = tiny_model.predict_expression(image_embeds=queries)
    _, _, _, ref = brute_force(bank.embeddings, bank.expression, queries, 5, "l1", "inverse_square")
    np.testing.assert_allclose(out.expression.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_model_pixel_path_equals_embedding_path(tiny_model):
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    via_pixels = tiny_model.predict_expression(pixel_values=pixels, k=4)
    embeds = tiny_model.get_image_features(pixels).pooler_output
    via_embeds = tiny_model.predict_expression(image_embeds=embeds, k=4)
    torch.testing.assert_close(via_pixels.expression, via_embeds.expression)


def test_k_larger_than_bank_is_refused(random_bank, tiny_model):
    bank, queries = random_bank
    with pytest.raises(ValueError, match="larger than the spot bank"):
        bank.search(queries, len(bank) + 1)
    with pytest.raises(ValueError, match="larger than the spot bank"):
        bank.predict(queries, len(bank) + 1)
    with pytest.raises(ValueError, match="larger than the spot bank"):
        tiny_model.predict_expression(image_embeds=queries, k=len(bank) + 1)


def test_weights_sum_to_one_and_inverse_square_favours_close(random_bank):
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import retrieval_weights

    bank, queries = random_bank
    _, idx = bank.search(queries, 10)
    for distance, weighting in itertools.product(DISTANCES, WEIGHTINGS):
        w = retrieval_weights(queries, bank.embeddings[idx], distance, weighting)
        torch.testing.assert_close(w.sum(1), torch.ones(len(queries)), rtol=0, atol=1e-5)
    # a neighbour equal to the query dominates instead of producing inf/NaN
    w = retrieval_weights(bank.embeddings[:1], bank.embeddings[:3][None], "l2", "inverse_square")
    assert torch.isfinite(w).all() and float(w[0, 0]) > 0.999
