"""Model cards: generated from benchmark results, parsed by huggingface_hub, kept in sync.

The results directories here are inputs in the format `mclstexp benchmark` writes
(summary.json); the assertions check that exactly their mclSTExp means reach `model-index`,
that baselines and the paper's figures stay in the text, and that the committed cards are
what the generator makes from the template.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mclstexp_hub.cli import main
from mclstexp_hub.hub.cards import DATASETS, load_results, render_card

REPO_ROOT = Path(__file__).resolve().parents[1]
CARDS = REPO_ROOT / "model_cards"
SECTIONS = ("## Intended use", "## Genes and units", "## Training data and split",
            "## Evaluation", "## Limitations", "## How to use", "## Citation")


def _summary(split: str = "section", **mean) -> dict:
    """A summary.json as `mclstexp benchmark` writes it (the fields a card reads)."""
    ours = {"n_sections": 2, "pcc_acg": 0.1234, "pcc_heg": 0.2345, "pcc_hvg": 0.1111,
            "mse": 0.0567, "mae": 0.1789, "n_nan_genes": 4, **mean}
    return {
        "dataset": "her2st", "split": split, "profile": "cpu",
        "profile_description": "frozen encoder, cached features",
        "n_genes": 785, "expression_units": "log10(1 + 1e4 * count / panel total)",
        "sections": ["B4", "C2", "C3", "C4"],
        "folds": [{"fold": i, "held_out": [s], "train": [t for t in ["B4", "C2", "C3", "C4"] if t != s]}
                  for i, s in enumerate(["B4", "C2", "C3", "C4"])],
        "folds_run": [0, 1],
        "methods": {
            "mclstexp": {"label": "mclSTExp (ours)", "description": "ours",
                         "per_fold": [{"fold": 0, "held_out": ["B4"]}, {"fold": 1, "held_out": ["C2"]}],
                         "mean": ours},
            "topk_mean_frozen": {"label": "top-200 mean, frozen features", "description": "b",
                                 "per_fold": [], "mean": {"n_sections": 2, "pcc_acg": 0.0987,
                                                          "pcc_heg": float("nan"), "mse": 0.0654}},
        },
        "command": "mclstexp benchmark --dataset her2st --out RESULTS",
        "machine": "2-core CPU, 24 GB RAM",
    }


@pytest.fixture
def results_dir(tmp_path) -> Path:
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    return tmp_path


def test_only_measured_mclstexp_means_enter_model_index(results_dir):
    text = render_card(None, results_dir, repo_id="org/mclstexp-her2st")
    card = ModelCard(text)
    values = {r.metric_name.split(":")[0]: r.metric_value for r in card.data.eval_results}
    assert values == {"PCC(ACG)": 0.1234, "PCC(HEG)": 0.2345, "PCC(HVG)": 0.1111,
                      "MSE": 0.0567, "MAE": 0.1789}
    result = card.data.eval_results[0]
    assert result.dataset_type == "her2st" and result.task_type == "spatial-gene-expression"
    assert result.dataset_split.startswith("leave-one-section-out")
    assert "B4, C2" in result.dataset_split and "cpu" in result.dataset_split
    yaml_block = text.split("---")[1]
    assert "0.0987" not in yaml_block and "0.2304" not in yaml_block  # baseline, paper
    assert "| PCC(ACG) | 0.1234 | 0.0987 |" in text  # the baseline is in the text table
    assert "*Reported by the paper*" in text and "0.2304" in text and "0.3866" in text
    assert "leave-one-section-out over 32 sections" in text


def test_patient_split_is_named_and_nan_metrics_are_left_out(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary("patient", pcc_hvg=float("nan"))))
    card = ModelCard(render_card("her2st", tmp_path))
    names = [r.metric_name.split(":")[0] for r in card.data.eval_results]
    assert "PCC(HVG)" not in names and len(names) == 4
    assert all(r.dataset_split.startswith("leave-one-patient-out") for r in card.data.eval_results)


def test_card_without_results_says_so_and_has_no_model_index():
    text = render_card("cscc", no_results_reason="Nothing was measured on cSCC.")
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index" not in text.split("---")[1]
    assert "No measured results are attached" in text and "Nothing was measured on cSCC." in text
    assert "0.3235" in text and "*Reported by the paper*" in text


@pytest.mark.parametrize("name", ["her2st", "cscc", "alex10x"])
def test_committed_cards_parse_and_carry_the_required_metadata_and_sections(name):
    card = ModelCard.load(CARDS / f"{name}.md")
    data = card.data
    assert data.library_name == "transformers" and data.license == "mit"
    assert {"spatial-transcriptomics", "histology"} <= set(data.tags)
    assert data.datasets == [name]
    text = card.text
    for heading in SECTIONS:
        assert heading in text, heading
    assert "Leave-one-*patient*-out" in text and "leave-one-*section*-out" in text.lower()
    assert "@article{min2024multimodal" in text
    assert f"mclstexp-hub/mclstexp-{name}" in text
    info = DATASETS[name]
    assert f"PCC(ACG) {info.paper_acg:.4f}" in text  # the paper's figure, in the text only
    if name in ("cscc", "alex10x"):
        assert data.eval_results is None and "not among the reference data" in text


def test_template_exists_and_committed_cards_are_its_output(tmp_path):
    assert (CARDS / "template.md").is_file()
    for name in ("her2st", "cscc", "alex10x"):
        text = (CARDS / f"{name}.md").read_text()
        command = re.search(r"Generated by: (.*?) \(edit model_cards/template\.md", text).group(1)
        argv = shlex.split(command)
        assert argv[:2] == ["mclstexp", "card"]
        out = tmp_path / f"{name}.md"
        assert main([*argv[1:], "--out", str(out)]) == 0
        assert out.read_text() == text, f"model_cards/{name}.md is stale: rerun `{command} --out ...`"


def test_card_cli_writes_a_parsable_card(results_dir, tmp_path, capsys):
    out = tmp_path / "cards" / "README.md"
    assert main(["card", str(results_dir), "--out", str(out), "--repo-id", "me/model"]) == 0
    card = ModelCard.load(out)
    assert len(card.data.eval_results) == 5 and 'repo_id = "me/model"' in card.text
    assert f"wrote {out}" in capsys.readouterr().out


def test_card_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["card", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    assert "summary.json" in capsys.readouterr().err
    broken = _summary()
    del broken["methods"]["mclstexp"]
    (tmp_path / "summary.json").write_text(json.dumps(broken))
    assert main(["card", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    assert "no 'mclstexp' results" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    assert main(["card", str(tmp_path), "--dataset", "cscc", "--out", str(tmp_path / "x.md")]) == 2
    assert "holds her2st results" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_checkpoint_description_comes_from_its_config_and_bank(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hub_server import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", seed=4, processor=False, pipeline=False)
    text = render_card("her2st", checkpoint=ckpt)
    assert "The model predicts 12 genes, in the fixed order" in text  # not the 785-gene panel
    assert "40 reference spots from section(s)\n  S1, S2" in text
    no_bank = make_checkpoint(tmp_path / "nobank", seed=4, bank=False, processor=False,
                              pipeline=False)
    assert "This checkpoint has no spot bank" in render_card("her2st", checkpoint=no_bank)


def test_results_loader_reads_the_benchmark_contract(results_dir):
    summary = load_results(results_dir)
    assert summary.dataset == "her2st" and summary.split_name == "leave-one-section-out"
    assert summary.heldout_sections == ["B4", "C2"]
