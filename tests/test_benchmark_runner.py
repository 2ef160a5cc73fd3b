"""The benchmark runner end to end on real HER2+ data (tiny setting), and `mclstexp evaluate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mclstexp_hub.benchmark.runner import METHODS as ALL_METHODS

# the run below uses the frozen `cpu` profile, for which the frozen-encoder ablation of an
# end-to-end profile does not apply, and no --expression-bank (the runner skips both with a note)
METHODS = tuple(m for m in ALL_METHODS
                if m not in ("frozen_encoder_ablation", "mclstexp_expression_bank"))

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

CONTRACT_KEYS = {
    "dataset", "split", "profile", "profile_description", "gene_panel", "n_genes",
    "expression_units", "sections", "folds", "methods", "paper_reported", "command", "machine",
    "date", "package_version", "seconds",
}
FOLD_METRICS = ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")


def _argv(out, her2st_dir, gene_lists_dir) -> list[str]:
    return [
        "benchmark", "her2st", "--data-dir", str(her2st_dir),
        "--genes", str(gene_lists_dir / "her2st_785.txt"), "--sections", "C3", "C4",
        "--split", "section", "--profile", "cpu", "--out", str(out),
        "--image-encoder", "mobilenetv3_small_050", "--epochs", "1", "--n-feature-views", "1",
        "--retrieval-k", "20", "--baseline-k", "30", "--quiet",
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory, her2st_dir, gene_lists_dir):
    """One tiny run through the CLI: 2 real sections, a very small encoder, 1 epoch."""
    from mclstexp_hub.cli import main

    out = tmp_path_factory.mktemp("bench") / "results"
    assert main(_argv(out, her2st_dir, gene_lists_dir)) == 0
    return out


def test_summary_json_has_the_contract_and_finite_numbers(results):
    summary = json.loads((results / "summary.json").read_text())
    assert CONTRACT_KEYS <= set(summary)
    assert summary["dataset"] == "her2st" and summary["split"] == "section"
    assert summary["profile"] == "cpu" and "FROZEN" in summary["profile_description"]
    assert summary["n_genes"] == 785 and summary["sections"] == ["C3", "C4"]
    assert summary["folds"] == [{"fold": 0, "held_out": ["C3"], "train": ["C4"]},
                                {"fold": 1, "held_out": ["C4"], "train": ["C3"]}]
    assert set(summary["methods"]) == set(METHODS)
    for key, method in summary["methods"].items():
        assert method["label"]
        assert [f["fold"] for f in method["per_fold"]] == [0, 1]
        for fold in method["per_fold"]:
            assert fold["held_out"] == summary["folds"][fold["fold"]]["held_out"]
            for metric in FOLD_METRICS:
                assert math.isfinite(fold[metric]), (key, metric)
            assert isinstance(fold["n_nan_genes"], int)
            assert -1 <= fold["pcc_acg"] <= 1 and fold["mse"] > 0
        for metric in FOLD_METRICS:
            expected = np.mean([f[metric] for f in method["per_fold"]])
            assert method["mean"][metric] == pytest.approx(expected)
    assert summary["methods"]["topk_mean_frozen"]["per_fold"][0]["details"]["k"] == 30
    assert summary["methods"]["mclstexp"]["per_fold"][0]["details"]["k"] == 20
    paper = summary["paper_reported"]
    assert paper["source"] == "Min et al., Briefings in Bioinformatics 2024"
    assert paper["her2st"] == {"pcc_acg": 0.2304, "pcc_heg": 0.3866, "n_sections": 32,
                               "n_genes": 785}
    assert "cores" in summary["machine"] and "torch" in summary["machine"]
    assert summary["command"].startswith("mclstexp benchmark her2st")


def test_tables_reports_and_figures_are_written(results):
    md = (results / "summary.md").read_text()
    assert "## Reported in the paper (not measured here)" in md
    measured, paper = md.split("## Reported in the paper")
    assert "## Mean over held-out sections (2 sections: C3, C4)" in measured
    assert "0.2304" not in measured and "0.2304" in paper  # never mixed
    table = pd.read_csv(results / "summary.csv")
    assert set(table["method"]) == set(METHODS)
    assert len(table) == len(METHODS) * 3  # 2 folds + mean
    for fold in (0, 1):
        d = results / "folds" / f"fold{fold}"
        for method in METHODS:
            for suffix in ("metrics.json", "metrics.csv", "per_gene.csv", "r_distribution.png"):
                assert (d / f"{method}_{suffix}").is_file(), (fold, method, suffix)
            section = "C3" if fold == 0 else "C4"
            png = d / f"{method}_best_genes_{section}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
        per_gene = pd.read_csv(d / "mclstexp_per_gene.csv")
        assert len(per_gene) == 785 and {"pearson_r", "p_value"} <= set(per_gene.columns)
    assert (results / "r_distribution.png").is_file()
    # only the first fold's checkpoint is kept by default
    assert (results / "folds" / "fold0" / "checkpoint" / "spot_bank.safetensors").is_file()
    assert not (results / "folds" / "fold1" / "checkpoint").exists()


def test_kept_checkpoint_reproduces_the_fold_metrics(results, tmp_path):
    """The saved checkpoint, run from pixels, scores the held-out section as the runner did."""
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint

    ckpt = results / "folds" / "fold0" / "checkpoint"
    # the runner scores with fp32 features (profile bf16 off); `auto` is bf16 on native-bf16 CPUs
    scored, paths = evaluate_checkpoint(ckpt, results / "dataset", ["C3"], tmp_path / "eval",
                                        progress=False, precision="fp32")
    runner = json.loads((results / "folds" / "fold0" / "mclstexp_metrics.json").read_text())
    ref = runner["per_section"][0]
    assert scored[0].pcc_acg == pytest.approx(ref["pcc_acg"], abs=1e-4)
    assert scored[0].mse == pytest.approx(ref["mse"], rel=1e-4)
    assert paths["metrics_json"].is_file()
    with pytest.raises(ValueError, match="in the model's spot bank"):
        evaluate_checkpoint(ckpt, results / "dataset", ["C4"], tmp_path / "leak", progress=False)


def test_runner_refuses_bad_requests(results):
    from mclstexp_hub.benchmark.runner import BenchmarkOptions, run_benchmark

    with pytest.raises(FileExistsError, match="finished benchmark"):
        run_benchmark(BenchmarkOptions(out=str(results), dataset_dir=str(results / "dataset")))
    with pytest.raises(ValueError, match="at least 2 patients"):
        run_benchmark(BenchmarkOptions(out=str(results / "p"), split="patient", progress=False,
                                       dataset_dir=str(results / "dataset")))
    with pytest.raises(ValueError, match="not in the dataset"):
        run_benchmark(BenchmarkOptions(out=str(results / "q"), sections=["B4", "C3"],
                                       dataset_dir=str(results / "dataset"), progress=False))
    with pytest.raises(FileNotFoundError, match="--expression-bank"):
        run_benchmark(BenchmarkOptions(out=str(results / "e"), expression_bank=str(results / "nowhere"),
                                       dataset_dir=str(results / "dataset"), progress=False))
    assert not (results / "e").exists()  # refused before anything is written


def test_rerun_reuses_identical_fold_results(results, her2st_dir, gene_lists_dir, capsys):
    """An identical re-run (e.g. after an interruption) reuses every finished fold result."""
    from mclstexp_hub.cli import main

    before = json.loads((results / "summary.json").read_text())
    capsys.readouterr()
    assert main(_argv(results, her2st_dir, gene_lists_dir) + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the identical earlier result") == 2 * len(METHODS)
    assert "method frozen_encoder_ablation: adds nothing under profile cpu (skipped)" in out
    assert "method mclstexp_expression_bank: needs --expression-bank DIR" in out
    after = json.loads((results / "summary.json").read_text())
    for key in METHODS:
        assert after["methods"][key]["mean"] == before["methods"][key]["mean"]
        assert after["methods"][key]["per_fold"] == before["methods"][key]["per_fold"]


def test_retrieval_k_auto_is_chosen_per_fold_by_inner_validation(tmp_path, her2st_dir,
                                                                 gene_lists_dir, capsys):
    """`--retrieval-k auto`: each fold's k and weighting come from its own training sections."""
    from mclstexp_hub.cli import main

    out = tmp_path / "auto"
    argv = _argv(out, her2st_dir, gene_lists_dir)
    argv[argv.index("--sections") + 1:argv.index("--split")] = ["C2", "C3", "C4"]
    argv[argv.index("--retrieval-k") + 1] = "auto"
    argv += ["--folds", "0", "--methods", "mclstexp", "topk_mean_frozen"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["retrieval_k"] == "auto"
    details = summary["methods"]["mclstexp"]["per_fold"][0]["details"]
    selection = details["retrieval_selection"]
    assert details["k"] == selection["retrieval_k"] and details["weighting"] == selection["retrieval_weighting"]
    assert selection["retrieval_k"] in selection["k_grid"]
    assert summary["methods"]["topk_mean_frozen"]["per_fold"][0]["details"]["k"] == 30  # --baseline-k

    thin = _argv(tmp_path / "thin", her2st_dir, gene_lists_dir)  # C3, C4: one training section
    thin[thin.index("--retrieval-k") + 1] = "auto"
    thin += ["--dataset-dir", str(out / "dataset")]
    assert main(thin) == 2
    assert "train on a single section" in capsys.readouterr().err


def test_expression_bank_method_retrieves_from_the_other_sections(results, tmp_path, her2st_dir,
                                                                  gene_lists_dir):
    """`--expression-bank`: the fold's own mclstexp model (trained once, shared) retrieves from
    the spot-tower embedding of every other HER2+ section with counts, minus the held-out
    patient's, with k chosen against that bank on the training sections."""
    from mclstexp_hub.cli import main

    out = tmp_path / "expr"
    argv = _argv(out, her2st_dir, gene_lists_dir) + [
        "--dataset-dir", str(results / "dataset"), "--folds", "0",
        "--methods", "mclstexp", "mclstexp_expression_bank", "--expression-bank", str(her2st_dir)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    bank_sections = summary["settings"]["expression_bank_sections"]
    assert bank_sections and not {"C3", "C4"} & set(bank_sections)  # no benchmark section
    ours = summary["methods"]["mclstexp"]["per_fold"][0]["details"]
    details = summary["methods"]["mclstexp_expression_bank"]["per_fold"][0]["details"]
    assert details["excluded_patients"] == ["C"]  # held-out C3's patient
    assert details["bank_sections"] and not any(s.startswith("C") for s in details["bank_sections"])
    assert set(details["bank_sections"]) < set(bank_sections)
    assert details["bank_spots"] > ours["train_spots"]
    selection = details["retrieval_selection"]
    assert details["k"] == selection["retrieval_k"] in selection["k_grid"]
    assert selection["sections"] == ["C4"]
    assert details["train_seconds"] == ours["train_seconds"]  # one training, shared
    for metric in FOLD_METRICS:
        assert math.isfinite(summary["methods"]["mclstexp_expression_bank"]["mean"][metric])
