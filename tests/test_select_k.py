"""`mclstexp train --retrieval-k auto`: k and weighting by inner leave-one-section-out validation."""

from __future__ import annotations

import json
import math

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
