"""Spot banks from expression alone (counts + spot positions, no images).

For the same spots, `mclstexp bank build CKPT --expression DIR --kind her2st` must give the bank
that the patch dataset gives (same embeddings, expression, sections, patients), and a bank built
this way still makes `evaluate` refuse held-out sections that it holds.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from mclstexp_hub import MclSTExpModel, SpotBank
from mclstexp_hub.cli import main
from mclstexp_hub.data.hf_dataset import load_st_dataset
from mclstexp_hub.training.bank import build_bank_from_dataset, build_bank_from_expression


@pytest.fixture(scope="module")
def model(synthetic):
    return MclSTExpModel.from_pretrained(synthetic.checkpoint_without_bank).eval()


def test_bank_from_expression_equals_bank_from_patch_dataset(synthetic, model):
    reference = build_bank_from_dataset(model, load_st_dataset(synthetic.dataset), progress=False,
                                        dataset_metadata=synthetic.metadata, attach=False)
    bank = build_bank_from_expression(model, "her2st", synthetic.data_dir,
                                      sections=synthetic.sections, progress=False, attach=False)
    assert len(bank) == len(reference) == synthetic.n_bank_spots
    assert torch.equal(bank.expression, reference.expression)
    assert torch.equal(bank.positions, reference.positions)
    torch.testing.assert_close(bank.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)
    assert bank.section_ids == reference.section_ids
    assert bank.patient_ids == reference.patient_ids
    assert set(bank.patient_ids) == {"A", "B"}
    assert bank.metadata["bank_batch_size"] == 32 and bank.metadata["from_expression_only"]
    assert bank.metadata["expression_transform"] == model.config.expression_transform


def test_bank_from_expression_excludes_a_patient(synthetic, model):
    bank = build_bank_from_expression(model, "her2st", synthetic.data_dir, progress=False,
                                      exclude_patients=["B"], attach=False)
    assert set(bank.section_ids) == {"A1"} and set(bank.patient_ids) == {"A"}


def test_cli_expression_bank_and_evaluate_refuses_overlap(synthetic, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic.checkpoint_without_bank, ckpt)
    code = main(["bank", "build", str(ckpt), "--expression", str(synthetic.data_dir),
                 "--kind", "her2st", "--sections", *synthetic.sections, "--quiet"])
    assert code == 0, capsys.readouterr().err
    bank = SpotBank.load(ckpt / "spot_bank.safetensors")
    assert sorted(set(bank.section_ids)) == sorted(synthetic.sections)
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="are in the model's spot bank"):
        evaluate_checkpoint(ckpt, synthetic.dataset, [synthetic.sections[0]], tmp_path / "ev",
                            progress=False)
    # --expression and --dataset are exclusive; --expression needs --kind
    assert main(["bank", "build", str(ckpt), "--expression", str(synthetic.data_dir),
                 "--quiet"]) == 2
    assert "--kind" in capsys.readouterr().err


def test_bank_precision_is_used_and_recorded(synthetic, model, tmp_path, capsys):
    """`bank build --precision bf16` embeds in bf16 (stored fp32); fp32 is the exact path."""
    dataset = load_st_dataset(synthetic.dataset)
    exact = build_bank_from_dataset(model, dataset, progress=False,
                                    dataset_metadata=synthetic.metadata, attach=False)
    half = build_bank_from_dataset(model, dataset, progress=False, precision="bf16",
                                   dataset_metadata=synthetic.metadata, attach=False)
    assert exact.metadata["precision"] == "fp32" and half.metadata["precision"] == "bf16"
    assert half.embeddings.dtype == torch.float32
    assert not torch.equal(half.embeddings, exact.embeddings)  # bf16 was really used
    cosine = torch.nn.functional.cosine_similarity(half.embeddings, exact.embeddings, dim=1)
    assert float(cosine.min()) > 0.99
    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic.checkpoint_without_bank, ckpt)
    assert main(["bank", "build", str(ckpt), "--dataset", str(synthetic.dataset),
                 "--precision", "fp32", "--quiet"]) == 0, capsys.readouterr().err
    saved = SpotBank.load(ckpt / "spot_bank.safetensors")
    assert saved.metadata["precision"] == "fp32"
    torch.testing.assert_close(saved.embeddings, exact.embeddings)
