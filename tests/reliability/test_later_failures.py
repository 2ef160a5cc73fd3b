"""A later step failing leaves no output: the final bank build of `train`, the figures of
`evaluate`. The failure is injected (monkeypatch) into the real CLI run in this process."""

from __future__ import annotations

import pytest

from mclstexp_hub.cli import main

from .harness import snapshot


def _last_line(err: str) -> str:
    return [line for line in err.strip().splitlines() if line.strip()][-1]


def test_train_whose_final_bank_build_fails_leaves_no_checkpoint(assets, tmp_path, capsys,
                                                                 monkeypatch):
    import mclstexp_hub.training.trainer as trainer

    def failing_bank(*args, **kwargs):
        raise OSError("disk full while embedding the spot bank (injected)")

    monkeypatch.setattr(trainer, "build_bank_from_dataset", failing_bank)
    before = snapshot(tmp_path)
    code = main(["train", "--dataset", str(assets.dataset), "--out", str(tmp_path / "ck"),
                 "--preset", "her2st", "--profile", "cpu", "--image-encoder", "resnet10t",
                 "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "disk full" in _last_line(err) and "Traceback" not in err
    assert snapshot(tmp_path) == before and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("blocked", ["metrics_csv", "gene_maps"])
def test_evaluate_whose_figures_fail_leaves_no_folder(assets, tmp_path, capsys, monkeypatch,
                                                      blocked):
    import mclstexp_hub.evaluation.report as report

    def failing(*args, **kwargs):
        raise OSError(f"cannot write {blocked} (injected)")

    monkeypatch.setattr(report, "write_csv" if blocked == "metrics_csv" else "plot_gene_maps",
                        failing)
    before = snapshot(tmp_path)
    code = main(["evaluate", "--model", str(assets.checkpoint), "--dataset", str(assets.dataset),
                 "--sections", "B1", "--allow-bank-overlap", "--out", str(tmp_path / "eval"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "injected" in _last_line(err)
    assert snapshot(tmp_path) == before and not (tmp_path / "eval").exists()
