"""Spot banks from reference spots: batching, exact persistence, clear errors.

The reference is the synthetic patch dataset of tests/conftest.py (`synthetic`, two sections
built by the project), so these tests run on every clone.
"""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import SMALL_ENCODER
from transformers import set_seed

from mclstexp_hub import MclSTExpModel, SpotBank
from mclstexp_hub.cli import main
from mclstexp_hub.data.hf_dataset import load_st_dataset
from mclstexp_hub.training import bank as bank_module
from mclstexp_hub.training.bank import build_bank_from_dataset
from mclstexp_hub.training.torch_dataset import dataset_arrays
from mclstexp_hub.training.trainer import build_training_config

BATCH = 32  # the documented default bank batch size


def _model(genes, positions, **overrides) -> MclSTExpModel:
    set_seed(0)
    config = build_training_config(
        genes,
        positions=positions,
        config_overrides={"image_encoder": SMALL_ENCODER, "retrieval_k": 10, **overrides},
        expression_transform="log10_cp10k_panel",
    )
    return MclSTExpModel(config).eval()


@pytest.fixture(scope="module")
def reference(synthetic):
    folder, meta = synthetic.dataset, synthetic.metadata
    dataset = load_st_dataset(folder)
    arrays = dataset_arrays(dataset)
    assert BATCH < len(dataset) < 2 * BATCH + 40  # ≥ 2 runs; 40-spot chunks split a run
    model = _model(meta["gene_names"], arrays["positions"])
    return dataset, folder, meta, arrays, model


def test_bank_batching_is_documented_and_honoured(reference, monkeypatch):
    dataset, _, meta, arrays, model = reference
    bank = build_bank_from_dataset(model, dataset, progress=False, dataset_metadata=meta,
                                   attach=False)
    assert bank.metadata["bank_batch_size"] == BATCH
    assert bank.metadata["batching"].startswith(f"consecutive runs of {BATCH} spots in dataset order")
    expression, positions = arrays["expression"], arrays["positions"]
    n = len(dataset)
    with torch.no_grad():
        for start in range(0, n, BATCH):  # runs of 32 spots, then the rest
            stop = start + BATCH
            direct = model.get_spot_features(expression[start:stop], positions[start:stop])
            assert torch.equal(bank.embeddings[start:stop], direct)
    # a spot's embedding depends on which spots share its sequence
    other = build_bank_from_dataset(model, dataset, batch_size=16, progress=False, attach=False)
    assert other.metadata["bank_batch_size"] == 16
    assert not torch.allclose(other.embeddings[:16], bank.embeddings[:16], atol=1e-4)
    # embedding in several calls (progress chunks) changes nothing
    monkeypatch.setattr(bank_module, "SUPER_CHUNK_SPOTS", 40)
    chunked = build_bank_from_dataset(model, dataset, progress=False, attach=False)
    assert torch.equal(chunked.embeddings, bank.embeddings)
    sections = [s for s in meta["sections"] for _ in range(meta["n_spots"][s])]
    assert bank.section_ids == sections == arrays["section"]
    assert bank.patient_ids == arrays["patient"] == [meta["patients"][s] for s in sections]
    assert torch.equal(bank.positions, positions) and torch.equal(bank.expression, expression)
    assert bank.metadata["expression_transform"] == meta["transform"]


def test_bank_save_load_is_exact_and_travels_with_the_checkpoint(reference, tmp_path):
    dataset, _, meta, _, model = reference
    bank = build_bank_from_dataset(model, dataset, progress=False, dataset_metadata=meta,
                                   source="synthetic test dataset", attach=True)
    assert model.spot_bank is bank
    loaded = SpotBank.load(bank.save(tmp_path / "bank.safetensors"))
    for name in ("embeddings", "expression", "positions"):
        assert torch.equal(getattr(loaded, name), getattr(bank, name)), name
    assert loaded.gene_names == bank.gene_names
    assert loaded.section_ids == bank.section_ids and loaded.patient_ids == bank.patient_ids
    assert loaded.metadata == bank.metadata
    model.save_pretrained(tmp_path / "ckpt")
    restored = MclSTExpModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(restored.spot_bank.embeddings, bank.embeddings)
    queries = torch.randn(3, model.config.projection_dim, generator=torch.Generator().manual_seed(0))
    a = model.predict_expression(image_embeds=queries)
    b = restored.predict_expression(image_embeds=queries)
    assert torch.equal(a.neighbour_indices, b.neighbour_indices)
    assert torch.equal(a.expression, b.expression)


def test_bank_bad_input_gives_clear_errors(reference):
    dataset, _, meta, arrays, model = reference
    genes = meta["gene_names"]
    with pytest.raises(ValueError, match="no spots"):
        build_bank_from_dataset(model, dataset.select([]), progress=False)
    swapped = {**meta, "gene_names": [genes[1], genes[0], *genes[2:]]}
    with pytest.raises(ValueError, match="different order"):
        build_bank_from_dataset(model, dataset, progress=False, dataset_metadata=swapped)
    with pytest.raises(ValueError, match="transform"):
        build_bank_from_dataset(model, dataset, progress=False,
                                dataset_metadata={**meta, "transform": "ln_cpm_panel"})
    with pytest.raises(ValueError, match="batch_size"):
        build_bank_from_dataset(model, dataset, batch_size=0, progress=False)
    # a bank built for other genes is refused by a model
    other = _model(list(reversed(genes)), arrays["positions"])
    foreign = build_bank_from_dataset(other, dataset, progress=False, attach=False)
    with pytest.raises(ValueError, match="genes do not match"):
        model.attach_spot_bank(foreign)
    # k larger than the bank
    build_bank_from_dataset(model, dataset.select(range(20)), progress=False)
    with pytest.raises(ValueError, match="larger than the spot bank"):
        model.predict_expression(image_embeds=torch.zeros(1, model.config.projection_dim), k=21)


def test_bank_cli_refuses_a_dataset_with_other_genes(reference, tmp_path, capsys):
    _, folder, meta, arrays, _ = reference
    other = _model(list(reversed(meta["gene_names"])), arrays["positions"])
    other.save_pretrained(tmp_path / "ckpt")
    code = main(["bank", "build", str(tmp_path / "ckpt"), "--dataset", str(folder), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mclstexp bank build: error:" in err and "genes do not match" in err
    assert not (tmp_path / "ckpt" / "spot_bank.safetensors").exists()


@pytest.mark.slow
def test_cli_train_then_bank_build_reproduces_the_checkpoint_bank(synthetic, tmp_path, capsys):
    folder, meta = synthetic.dataset, synthetic.metadata
    train = synthetic.sections[0]
    out = tmp_path / "ckpt"
    code = main([
        "train", "--dataset", str(folder), "--preset", "her2st", "--train-sections", train,
        "--out", str(out),
        "--profile", "cpu", "--epochs", "2", "--batch-size", "64", "--feature-views", "1",
        "--image-encoder", SMALL_ENCODER, "--retrieval-k", "16", "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "spot_bank.safetensors",
            "preprocessor_config.json", "training_info.json"} <= names
    assert not any(n.startswith(".staging") for n in names) and "checkpoints" not in names
    model = MclSTExpModel.from_pretrained(out)
    assert len(model.spot_bank) == meta["n_spots"][train] and model.config.max_position == 64
    assert model.spot_bank.section_ids == [train] * meta["n_spots"][train]
    # training writes its bank in fp32; `--precision auto` is bf16 on a CPU with native bf16
    code = main(["bank", "build", str(out), "--dataset", str(folder), "--sections", train,
                 "--out", str(tmp_path / "rebuilt.safetensors"), "--quiet", "--precision", "fp32"])
    assert code == 0, capsys.readouterr().err
    rebuilt = SpotBank.load(tmp_path / "rebuilt.safetensors")
    assert torch.equal(rebuilt.embeddings, model.spot_bank.embeddings)
    assert main(["bank", "info", str(tmp_path / "rebuilt.safetensors")]) == 0
    assert "consecutive runs of 32 spots" in capsys.readouterr().out
