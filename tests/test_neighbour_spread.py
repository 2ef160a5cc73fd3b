"""Per-spot spread of the retrieved neighbours (`SpotBank.retrieve(..., return_neighbour_spread=True)`)."""

from __future__ import annotations

import numpy as np
import torch

from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank


def _bank(expression, embeddings=None) -> SpotBank:
    expression = torch.as_tensor(expression, dtype=torch.float32)
    if embeddings is None:
        embeddings = torch.randn(expression.shape[0], 4, generator=torch.Generator().manual_seed(1))
    genes = [f"G{i}" for i in range(expression.shape[1])]
    return SpotBank(embeddings=embeddings, expression=expression, gene_names=genes)


def test_spread_is_zero_when_neighbours_agree():
    bank = _bank(torch.tensor([[1.0, 2.0, 0.5]]).repeat(10, 1))
    queries = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    expression, _, _, spread = bank.retrieve(queries, 6, return_neighbour_spread=True)
    assert spread.shape == (5, 3)
    assert torch.equal(spread, torch.zeros(5, 3))
    torch.testing.assert_close(expression, torch.tensor([[1.0, 2.0, 0.5]]).repeat(5, 1))


def test_spread_is_the_weighted_std_by_hand():
    expression = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0], [9.0, 9.0]])
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]])
    bank = _bank(expression, embeddings)
    query = torch.tensor([[1.0, 0.05]])
    pred, idx, w, spread = bank.retrieve(query, 3, distance="l1", weighting="inverse_square",
                                         return_neighbour_spread=True)
    assert sorted(idx[0].tolist()) == [0, 1, 2]
    d = (embeddings[idx[0]] - query).abs().sum(1).double()
    weights = (1 / d**2) / (1 / d**2).sum()
    x = expression[idx[0]].double()
    mean = (weights[:, None] * x).sum(0)
    std = ((weights[:, None] * (x - mean) ** 2).sum(0)).sqrt()
    torch.testing.assert_close(w[0].double(), weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred[0].double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spread[0].double(), std, rtol=1e-5, atol=1e-6)
    # uniform weights: the population std of the neighbours
    _, idx, _, spread = bank.retrieve(query, 3, weighting="mean", return_neighbour_spread=True)
    expected = np.std(expression[idx[0]].numpy(), axis=0)
    np.testing.assert_allclose(spread[0].numpy(), expected, rtol=1e-5)
    # without the flag the loop still returns three values
    assert len(bank.retrieve(query, 3)) == 3


def test_prediction_and_anndata_carry_the_spread(synthetic):
    from mclstexp_hub import MclSTExpModel
    from mclstexp_hub.models.mclstexp.pipeline_mclstexp import build_prediction_anndata

    model = MclSTExpModel.from_pretrained(synthetic.checkpoint).eval()
    queries = model.spot_bank.embeddings[:7] + 0.01
    pred = model.predict_expression(image_embeds=queries)
    assert pred.neighbour_spread.shape == pred.expression.shape
    torch.testing.assert_close(pred.spot_neighbour_spread, pred.neighbour_spread.mean(1))
    assert (pred.neighbour_spread >= 0).all() and (pred.spot_neighbour_spread > 0).all()
    spots = synthetic.spots.iloc[:7].copy()
    adata = build_prediction_anndata(pred.expression.numpy(), synthetic.genes, spots,
                                     np.zeros((4, 4, 3), np.uint8), 1.0, 10.0, "lib", {},
                                     neighbour_spread=pred.neighbour_spread.numpy())
    np.testing.assert_allclose(adata.layers["neighbour_spread"], pred.neighbour_spread.numpy())
    np.testing.assert_allclose(adata.obs["neighbour_spread"].to_numpy(), pred.spot_neighbour_spread.numpy(),
                               rtol=1e-6)


def test_predict_slide_writes_layer_obs_and_plot_panel(synthetic, tmp_path):
    from mclstexp_hub.prediction.predict import load_pipeline
    from mclstexp_hub.visualization.spatial_maps import plot_gene_map

    pipe = load_pipeline(synthetic.checkpoint, device="cpu", batch_size=8)
    adata = pipe.predict_slide(synthetic.image, synthetic.spots)
    assert adata.layers["neighbour_spread"].shape == adata.shape
    assert "neighbour_spread" in adata.obs and np.isfinite(adata.obs["neighbour_spread"]).all()
    np.testing.assert_allclose(adata.obs["neighbour_spread"], adata.layers["neighbour_spread"].mean(1),
                               rtol=1e-5)
    path = plot_gene_map(adata, synthetic.genes[0], tmp_path / "g.png")
    assert path.stat().st_size > 0
