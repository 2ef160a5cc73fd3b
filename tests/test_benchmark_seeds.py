"""Seed spread and verdict over benchmark runs (`mclstexp_hub.benchmark.seeds`)."""

from __future__ import annotations

import json

import pytest

from mclstexp_hub.benchmark.seeds import combine_seeds, main


def _run(tmp_path, seed, ours, base, split="section"):
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    def mean(acg, heg):
        return {"pcc_acg": acg, "pcc_heg": heg, "pcc_hvg": acg, "mse": 1 - acg, "mae": 1 - heg}
    summary = {"dataset": "her2st", "split": split, "profile": "cpu-e2e", "sections": ["B4", "C2"],
               "settings": {"seed": seed}, "command": f"bench --seed {seed}", "machine": "test",
               "methods": {"mclstexp": {"label": "ours", "mean": mean(*ours)},
                           "ridge_cv_probe": {"label": "ridge", "mean": mean(*base)}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_verdict_needs_a_margin_larger_than_the_spread(tmp_path):
    runs = [_run(tmp_path, 0, (0.30, 0.20), (0.20, 0.19)),
            _run(tmp_path, 1, (0.32, 0.24), (0.21, 0.19)),
            _run(tmp_path, 2, (0.31, 0.18), (0.20, 0.20))]
    result = combine_seeds(runs)
    acg = result["methods"]["mclstexp"]["pcc_acg"]
    assert acg["mean"] == pytest.approx(0.31) and acg["spread"] == pytest.approx(0.02)
    assert acg["per_seed"] == [0.30, 0.32, 0.31]
    v = result["verdict"]["ridge_cv_probe"]
    assert v["pcc_acg"]["beats"]  # margin 0.1033 > spread 0.02
    assert v["pcc_acg"]["margin"] == pytest.approx(0.31 - 0.61 / 3)
    # HEG: margin 0.2067 - 0.1933 = 0.0133 < ours' spread 0.06 → not beaten
    assert not v["pcc_heg"]["beats"] and v["pcc_heg"]["spread"] == pytest.approx(0.06)
    assert (v["pcc_acg"]["outcome"], v["pcc_heg"]["outcome"]) == ("beats", "ties")
    assert result["beats_all"] is False
    out = tmp_path / "seeds"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    text = (out / "seeds.md").read_text()
    assert "tie (within the spread)" in text and "0.3100 ± 0.0200" in text


def test_runs_that_differ_in_more_than_the_seed_are_refused(tmp_path, capsys):
    a = _run(tmp_path, 0, (0.3, 0.2), (0.2, 0.2))
    b = _run(tmp_path, 1, (0.3, 0.2), (0.2, 0.2), split="patient")
    with pytest.raises(ValueError, match="split"):
        combine_seeds([a, b])
    c = tmp_path / "unfinished"
    c.mkdir()
    assert main([str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    assert "summary.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
