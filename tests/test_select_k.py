"""`mclstexp train --retrieval-k auto`: k and weighting by inner leave-one-section-out validation."""

from __future__ import annotations

import json
import math

import pytest
from test_training_helpers import SMALL_ENCODER

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.cli import main


def test_train_retrieval_k_auto_records_the_curve_and_picks_its_argmax(synthetic, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main([
        "train", "--dataset", str(synthetic.dataset), "--preset", "her2st", "--out", str(out),
        "--profile", "cpu", "--epochs", "2", "--batch-size", "32", "--feature-views", "1",
        "--image-encoder", SMALL_ENCODER, "--retrieval-k", "auto",
        "--retrieval-k-grid", "3", "5", "10", "25", "100000", "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "training_info.json").read_text())
    selection = info["retrieval_selection"]
    n = synthetic.metadata["n_spots"]
    smallest_bank = min(sum(v for s, v in n.items() if s != left) for left in n)
    assert selection["k_grid"] == [k for k in (3, 5, 10, 25) if k <= smallest_bank]
    assert selection["sections"] == synthetic.sections
    curve = selection["curve"]
    assert len(curve) == len(selection["k_grid"]) * 2
    assert {c["weighting"] for c in curve} == {"inverse_square", "mean"}
    for point in curve:
        assert set(point["per_section"]) == set(synthetic.sections)
        values = [v for v in point["per_section"].values() if math.isfinite(v)]
        assert math.isclose(point["mean_pcc_acg"], sum(values) / len(values), rel_tol=1e-9)
    best = max(c["mean_pcc_acg"] for c in curve)
    chosen = next(c for c in curve if c["k"] == selection["retrieval_k"]
                  and c["weighting"] == selection["retrieval_weighting"])
    assert chosen["mean_pcc_acg"] == best == selection["best_mean_pcc_acg"]
    model = MclSTExpModel.from_pretrained(out)
    assert model.config.retrieval_k == selection["retrieval_k"] == info["retrieval_k"]
    assert model.config.retrieval_weighting == selection["retrieval_weighting"]


def test_retrieval_k_auto_needs_two_training_sections(synthetic, tmp_path, capsys):
    code = main([
        "train", "--dataset", str(synthetic.dataset), "--preset", "her2st",
        "--train-sections", synthetic.sections[0], "--out", str(tmp_path / "c"),
        "--profile", "cpu", "--epochs", "1", "--feature-views", "1",
        "--image-encoder", SMALL_ENCODER, "--retrieval-k", "auto", "--quiet",
    ])
    assert code == 2
    assert "at least 2 training sections" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_selection_against_a_reference_bank_leaves_out_each_sections_patient():
    """Validating k against a fixed bank (e.g. one built from expression alone): a training
    section never retrieves from its own patient's bank spots, as a held-out patient is absent
    from the bank at test time. Here patient P's bank spots are exact copies of P's queries,
    so any use of them would show; the scores must equal retrieval from patient Q's spots alone."""
    import numpy as np
    import torch

    from mclstexp_hub.evaluation.metrics import pearson_per_gene
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank
    from mclstexp_hub.training.select_k import select_retrieval_against_bank

    rng = np.random.default_rng(0)
    queries = torch.from_numpy(rng.standard_normal((30, 8)).astype(np.float32))
    observed = rng.random((30, 5)).astype(np.float32)
    sections = ["s1"] * 15 + ["s2"] * 15  # both of patient P
    others = torch.from_numpy(rng.standard_normal((40, 8)).astype(np.float32))
    other_expr = torch.from_numpy(rng.random((40, 5)).astype(np.float32))
    genes = [f"g{i}" for i in range(5)]
    bank = SpotBank(torch.cat([queries, others]), torch.cat([torch.from_numpy(observed), other_expr]),
                    genes, section_ids=["s1"] * 15 + ["s2"] * 15 + ["q1"] * 40,
                    patient_ids=["P"] * 30 + ["Q"] * 40)
    selection = select_retrieval_against_bank(bank, queries, observed, sections, ["P"] * 30,
                                              distance="l1", k_grid=(5, 10, 100),
                                              weightings=("mean",))
    assert selection["k_grid"] == [5, 10]  # 100 > the 40 spots left for each section
    assert selection["retrieval_k"] in (5, 10) and selection["retrieval_weighting"] == "mean"
    q_only = SpotBank(others, other_expr, genes)
    for entry in selection["curve"]:
        for section, score in entry["per_section"].items():
            rows = [i for i, s in enumerate(sections) if s == section]
            predicted = q_only.retrieve(queries[rows], entry["k"], "l1", "mean")[0].numpy()
            r, _ = pearson_per_gene(predicted, observed[rows])
            assert score == np.nanmean(r)
    # a bank of the training patients only leaves nothing to validate against
    own = SpotBank(queries, torch.from_numpy(observed), genes, section_ids=sections,
                   patient_ids=["P"] * 30)
    with pytest.raises(ValueError, match="only the training sections' own patients"):
        select_retrieval_against_bank(own, queries, observed, sections, ["P"] * 30, distance="l1")
