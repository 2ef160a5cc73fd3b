"""Self-supervised pretraining of the image tower on unlabelled tissue (`mclstexp pretrain`).

Synthetic slides (tests/conftest.py `synthetic`) and a small timm encoder, so these run on
every clone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.cli import main
from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpImageTower
from mclstexp_hub.training.ssl_pretrain import (
    SSLSettings,
    collect_tiles,
    nt_xent_loss,
    pretrain_tower,
    pretraining_record,
    random_crops,
    save_pretrained_tower,
    tissue_tiles,
)
from mclstexp_hub.training.trainer import load_pretrained_encoder


def _settings(patch: int, **changes) -> SSLSettings:
    values = {"image_encoder": "resnet10t", "encoder_input_size": 32, "window": patch,
              "pitch": patch // 2, "epochs": 1, "batch_size": 8, "max_tiles": 16,
              "learning_rate": 1e-3}
    values.update(changes)
    return SSLSettings(**values)


def test_tiles_lie_on_tissue_inside_the_image_at_the_encoder_scale(synthetic):
    settings = _settings(synthetic.patch_size, max_tiles=None)
    tiles, centres = tissue_tiles(synthetic.image, settings)
    assert tiles.dtype == np.uint8 and tiles.shape[1:] == (40, 40, 3)  # 32 px + 25 % margin
    assert len(tiles) == len(centres) > len(synthetic.spots)  # more windows than spots
    half = settings.window * (1 + settings.margin) / 2
    width, height = synthetic.image_size
    assert (centres[:, 0] >= half).all() and (centres[:, 0] <= width - half).all()
    assert (centres[:, 1] >= half).all() and (centres[:, 1] <= height - half).all()
    # grid points on glass are dropped: a full-tissue setting keeps fewer than a lax one
    strict, _ = tissue_tiles(synthetic.image, _settings(synthetic.patch_size, max_tiles=None,
                                                          min_tissue_fraction=1.0))
    lax, _ = tissue_tiles(synthetic.image, _settings(synthetic.patch_size, max_tiles=None,
                                                       min_tissue_fraction=0.01))
    assert len(strict) < len(tiles) < len(lax)


def test_default_jitter_is_the_papers_augmentation_strength():
    from mclstexp_hub.training import augment

    assert SSLSettings().jitter == augment.JITTER


def test_max_tiles_takes_a_seeded_subset(synthetic):
    a, record = collect_tiles([synthetic.image], _settings(synthetic.patch_size, max_tiles=10))
    b, _ = collect_tiles([synthetic.image], _settings(synthetic.patch_size, max_tiles=10))
    assert len(a) == 10 and np.array_equal(a, b)
    assert record[0]["tiles"] > 10 and record[0]["image"] == str(synthetic.image)
    with pytest.raises(ValueError, match="lower --batch-size"):
        collect_tiles([synthetic.image], _settings(synthetic.patch_size, max_tiles=4, batch_size=8))


def test_nt_xent_rewards_matching_crops_and_is_chance_when_all_agree():
    z = torch.eye(6) * 10
    assert nt_xent_loss(z, z.clone(), temperature=0.1) < 1e-3
    same = torch.ones(6, 4)
    assert nt_xent_loss(same, same, temperature=0.1).item() == pytest.approx(math.log(11), rel=1e-5)


def test_random_crops_have_the_view_size_and_come_from_the_tile():
    tiles = torch.arange(2 * 3 * 10 * 10, dtype=torch.int64).reshape(2, 3, 10, 10).to(torch.uint8)
    crops = random_crops(tiles, 6, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 6, 6)
    for tile, crop in zip(tiles, crops):
        found = any(torch.equal(tile[:, y:y + 6, x:x + 6], crop) for y in range(5) for x in range(5))
        assert found


def test_pretraining_changes_the_tower_reproducibly_and_records_the_run(synthetic, tmp_path):
    settings = _settings(synthetic.patch_size)
    state, record = pretrain_tower([synthetic.image], settings, sections=["B1"], progress=False)
    again, _ = pretrain_tower([synthetic.image], settings, sections=["B1"], progress=False)
    torch.manual_seed(settings.seed)
    fresh = MclSTExpImageTower(settings.tower_config()).model.state_dict()
    assert state.keys() == fresh.keys()
    changed = [k for k in state if state[k].is_floating_point() and not torch.equal(state[k], fresh[k])]
    assert changed, "pretraining did not change the tower's weights"
    assert all(torch.equal(state[k], again[k]) for k in state), "same seed, different weights"
    assert record["sections"] == ["B1"] and record["tiles"] == 16
    assert record["steps"] == 2 and len(record["history"]) == 1
    assert record["settings"]["image_encoder"] == "resnet10t"
    assert record["chance_loss"] == pytest.approx(math.log(15))

    path = save_pretrained_tower(state, record, tmp_path / "tower.safetensors")
    assert pretraining_record(path) == json.loads(json.dumps(record))
    assert [p.name for p in tmp_path.iterdir()] == ["tower.safetensors"]  # no temporary left
    # loads into a model whose encoder sees the same size, and is refused at another size
    model = MclSTExpModel(MclSTExpConfig(gene_names=["a", "b"], image_encoder="resnet10t",
                                         patch_size=synthetic.patch_size, encoder_input_size=32,
                                         max_position=64))
    load_pretrained_encoder(model, str(path))
    loaded = model.image_encoder.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    other = MclSTExpModel(MclSTExpConfig(gene_names=["a", "b"], image_encoder="resnet10t",
                                         patch_size=synthetic.patch_size, max_position=64))
    with pytest.raises(ValueError, match="--encoder-input-size 32"):
        load_pretrained_encoder(other, str(path))


def test_training_from_a_pretrained_tower_records_its_pretraining(synthetic, tmp_path):
    from mclstexp_hub.data.hf_dataset import load_st_dataset
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.torch_dataset import SpotPatchDataset
    from mclstexp_hub.training.trainer import train_model

    settings = _settings(synthetic.patch_size)
    state, record = pretrain_tower([synthetic.image], settings, sections=["B1"], progress=False)
    path = save_pretrained_tower(state, record, tmp_path / "tower.safetensors")
    spots = SpotPatchDataset(load_st_dataset(synthetic.dataset, sections=["A1"]))
    prof = get_profile("cpu").replace(epochs=1, batch_size=16, n_feature_views=1)
    result = train_model(spots, synthetic.genes, tmp_path / "ckpt", profile=prof,
                         config_overrides={"image_encoder": "resnet10t", "retrieval_k": 8,
                                           "encoder_input_size": 32},
                         pretrained_encoder=str(path), dataset_metadata=synthetic.metadata,
                         progress=False)
    # the frozen cpu profile keeps the pretrained tower as it is
    trained = result.model.image_encoder.model.state_dict()
    assert all(torch.equal(trained[k], state[k]) for k in state)
    info = json.loads((tmp_path / "ckpt" / "training_info.json").read_text())
    assert info["pretrained_encoder"] == str(path)
    assert info["pretrained_encoder_record"]["tiles"] == record["tiles"]
    assert info["pretrained_encoder_record"]["settings"] == record["settings"]

    # B1 is not in the bank, but its tiles pretrained the tower: evaluate refuses it as held out
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match=r"\['B1'\].*pretrained on their tissue tiles"):
        evaluate_checkpoint(tmp_path / "ckpt", synthetic.dataset, ["B1"], tmp_path / "eval",
                            progress=False, precision="fp32")
    assert not (tmp_path / "eval").exists()
    results, _ = evaluate_checkpoint(tmp_path / "ckpt", synthetic.dataset, ["B1"],
                                     tmp_path / "eval", progress=False, precision="fp32",
                                     allow_bank_overlap=True, n_map_genes=0)
    assert [r.section for r in results] == ["B1"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["sections_seen_by_pretraining"] == ["B1"]


def test_benchmark_refuses_a_tower_pretrained_on_a_held_out_section(synthetic, tmp_path, capsys):
    settings = _settings(synthetic.patch_size)
    state, record = pretrain_tower([synthetic.image], settings, sections=["B1"], progress=False)
    path = save_pretrained_tower(state, record, tmp_path / "tower.safetensors")
    args = ["benchmark", "her2st", "--dataset-dir", str(synthetic.dataset), "--profile", "cpu",
            "--image-encoder", "resnet10t", "--encoder-input-size", "32", "--epochs", "1",
            "--pretrained-encoder", str(path), "--methods", "topk_mean_frozen", "--quiet",
            "--out", str(tmp_path / "bench")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pretrained on tissue tiles of ['B1'], held out in fold" in err
    assert "--sections A1" in err
    assert not (tmp_path / "bench").exists()  # refused before anything is written


def test_pretrain_command_writes_the_weights_and_refuses_bad_input(synthetic, tmp_path, capsys):
    out = tmp_path / "tower.safetensors"
    args = ["pretrain", "her2st", "--data-dir", str(synthetic.data_dir), "--sections", "B1",
            "--image-encoder", "resnet10t", "--encoder-input-size", "32",
            "--window", str(synthetic.patch_size), "--pitch", str(synthetic.patch_size // 2),
            "--epochs", "1", "--batch-size", "8", "--max-tiles", "16", "--precision", "fp32",
            "--quiet", "--out", str(out)]
    assert main(args) == 0
    record = pretraining_record(out)
    assert record["sections"] == ["B1"] and record["settings"]["precision"] == "fp32"
    assert "--encoder-input-size 32" in capsys.readouterr().out
    # an existing output is kept unless --overwrite
    before = out.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    # wrong suffix, an explicit 0 epochs, a batch of one: one line, nothing written
    for bad, message in ((["--out", str(tmp_path / "x.pt")], "*.safetensors"),
                         (["--epochs", "0", "--out", str(tmp_path / "y.safetensors")], "epochs"),
                         (["--batch-size", "1", "--out", str(tmp_path / "z.safetensors")],
                          "at least 2")):
        assert main(args + bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tower.safetensors"]


def test_benchmark_runs_a_fold_on_a_tower_pretrained_on_its_training_sections(synthetic, tmp_path):
    """The frozen profile's features, its kept checkpoint and the summary all use the
    pretrained tower at its size; the pretraining record is in summary.json."""
    image = synthetic.data_dir / "ST-imgs" / "A" / "A1" / "A1_synthetic_HE.jpg"
    assert image.is_file()
    settings = _settings(synthetic.patch_size)
    state, record = pretrain_tower([image], settings, sections=["A1"], progress=False)
    path = save_pretrained_tower(state, record, tmp_path / "tower.safetensors")
    out = tmp_path / "bench"
    args = ["benchmark", "her2st", "--dataset-dir", str(synthetic.dataset), "--profile", "cpu",
            "--image-encoder", "resnet10t", "--encoder-input-size", "32", "--epochs", "1",
            "--retrieval-k", "8", "--baseline-k", "8", "--pretrained-encoder", str(path),
            "--folds", "1", "--methods", "mclstexp", "topk_mean_frozen", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds_run"] == [1] and summary["folds"][1]["held_out"] == ["B1"]
    assert summary["settings"]["feature_encoder_input_size"] == 32
    assert summary["settings"]["pretrained_encoder_record"]["sections"] == ["A1"]
    config = json.loads((out / "folds" / "fold1" / "checkpoint" / "config.json").read_text())
    assert config["encoder_input_size"] == 32
    kept = MclSTExpModel.from_pretrained(out / "folds" / "fold1" / "checkpoint")
    weights = kept.image_encoder.model.state_dict()
    assert all(torch.equal(weights[k], state[k]) for k in state)  # the frozen pretrained tower
