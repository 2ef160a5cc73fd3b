"""Training on real HER2+ patches: loss goes down, runs are reproducible, resuming is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training_helpers import SMALL_ENCODER, state_hash, tiny_her2st_dataset
from transformers import TrainerCallback, set_seed

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
from mclstexp_hub.training.features import (
    compute_image_features,
    encoder_fingerprint,
    recalibrate_batchnorm,
)
from mclstexp_hub.training.profiles import DATASET_PRESETS, TrainProfile, get_profile
from mclstexp_hub.training.torch_dataset import SpotCollator, SpotPatchDataset
from mclstexp_hub.training.trainer import (
    build_training_config,
    derive_max_position,
    resolve_profile,
    train_model,
)

SMALL = {"image_encoder": SMALL_ENCODER, "retrieval_k": 8}


def _fixed_batch_loss(model: MclSTExpModel, spots: SpotPatchDataset) -> float:
    """Eval-mode contrastive loss over all given spots as one clean batch."""
    model.eval()
    with torch.no_grad():
        out = model(
            pixel_values=scale_pixel_values(spots.patches, model.config.pixel_scaling),
            expression=spots.expression,
            positions=spots.positions,
        )
    return float(out.loss)


# ----------------------------------------------------------------- profiles / config
def test_profiles_follow_the_paper_and_document_the_cpu_deviation():
    paper = get_profile("paper", "her2st")
    assert (paper.epochs, paper.batch_size, paper.learning_rate, paper.weight_decay) == (
        90, 128, 1e-4, 1e-3,
    )
    assert not paper.freeze_image_encoder and paper.augment and paper.n_feature_views == 0
    assert get_profile("paper", "alex10x").epochs == 15
    assert DATASET_PRESETS["alex10x"]["retrieval_k"] == 2400
    cpu = get_profile("cpu", "her2st")
    assert cpu.freeze_image_encoder and cpu.n_feature_views > 0 and cpu.include_clean_view
    with pytest.raises(ValueError, match="Unknown training profile"):
        get_profile("gpu", "her2st")
    with pytest.raises(ValueError, match="Unknown dataset preset"):
        get_profile("paper", "mouse_brain")
    with pytest.raises(ValueError, match="freeze_image_encoder"):
        TrainProfile(name="x", epochs=1, n_feature_views=2)
    # freezing the paper profile switches to cached features; unfreezing drops them
    assert resolve_profile("paper", "her2st", freeze_image_encoder=True).n_feature_views == cpu.n_feature_views
    assert resolve_profile("cpu", "her2st", freeze_image_encoder=False).n_feature_views == 0
    assert resolve_profile("cpu", "her2st", epochs=3, batch_size=None).epochs == 3


def test_config_from_genes_preset_data_and_overrides():
    genes = [f"G{i}" for i in range(5)]
    positions = torch.tensor([[3, 5], [29, 31]])
    assert derive_max_position(positions) == 64
    assert derive_max_position(torch.tensor([[127, 2]])) == 128
    config = build_training_config(genes, dataset_preset="alex10x", positions=positions, patch_size=224)
    assert config.max_position == 64 and config.retrieval_k == 2400 and config.gene_names == genes
    config = build_training_config(
        genes, positions=positions, config_overrides={"spot_encoder_layers": 0, "max_position": 65536}
    )
    assert config.spot_encoder_layers == 0 and config.max_position == 65536
    with pytest.raises(ValueError, match="patch_size"):
        build_training_config(genes, patch_size=224, config_overrides={"patch_size": 112})


# ------------------------------------------------------------------ real-data training
def test_cached_feature_training_reduces_loss_on_real_patches():
    dataset, _, meta = tiny_her2st_dataset(48)
    profile = get_profile("cpu").replace(
        epochs=12, batch_size=24, n_feature_views=1, learning_rate=1e-3
    )
    result = train_model(
        dataset, meta["gene_names"], None, config_overrides=SMALL, profile=profile,
        dataset_metadata=meta, progress=False,
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 12 * 2
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])
    model = result.model
    assert result.train_spots == 48 and len(model.spot_bank) == 48
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    # the checkpoint's encoder is the untouched one whose features were trained on
    set_seed(0)
    reference = MclSTExpModel(model.config)
    spots = SpotPatchDataset(dataset)
    for (name, a), (_, b) in zip(
        model.image_encoder.state_dict().items(), reference.image_encoder.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    # retrieval works end to end and returns real bank profiles
    prediction = model.predict_expression(
        pixel_values=scale_pixel_values(spots.patches[:4], model.config.pixel_scaling)
    )
    assert prediction.expression.shape == (4, len(meta["gene_names"]))
    assert torch.isfinite(prediction.expression).all()


def test_features_computed_once_for_all_spots_serve_a_fold():
    dataset, _, meta = tiny_her2st_dataset(24)
    spots = SpotPatchDataset(dataset)
    set_seed(0)
    config = build_training_config(meta["gene_names"], config_overrides=SMALL,
                                   positions=spots.positions, patch_size=224)
    encoder_model = MclSTExpModel(config)
    features = torch.cat([
        compute_image_features(encoder_model, spots, progress=False),
        compute_image_features(encoder_model, spots, 2, augment=True, progress=False),
    ])  # (3, 24, D): clean view first
    fold = dataset.select(range(16))
    result = train_model(
        fold, meta["gene_names"], None, config_overrides=SMALL,
        profile=get_profile("cpu").replace(epochs=20, batch_size=8, learning_rate=1e-3),
        cached_features=features[:, :16], dataset_metadata=meta, progress=False,
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert encoder_fingerprint(result.model) == encoder_fingerprint(encoder_model)
    assert len(result.model.spot_bank) == 16


@pytest.mark.slow
def test_end_to_end_training_steps_reduce_loss_on_real_patches():
    dataset, _, meta = tiny_her2st_dataset(16)
    spots = SpotPatchDataset(dataset)
    result = train_model(
        dataset, meta["gene_names"], None, config_overrides=SMALL, profile="paper",
        epochs=4, batch_size=8, learning_rate=1e-3, dataset_metadata=meta, progress=False,
    )
    set_seed(0)
    initial = MclSTExpModel(result.model.config)
    assert any(p.requires_grad for p in result.model.image_encoder.parameters())
    assert _fixed_batch_loss(result.model, spots) < _fixed_batch_loss(initial, spots)
    assert len([h for h in result.history if "loss" in h]) == 8


def test_seeded_training_is_reproducible_on_cpu():
    dataset, _, meta = tiny_her2st_dataset(16)
    spots = SpotPatchDataset(dataset)  # decode once, reuse for every run
    profile = get_profile("paper").replace(epochs=1, batch_size=8)
    runs = [
        train_model(spots, meta["gene_names"], None, config_overrides=SMALL, profile=profile,
                    seed=seed, progress=False)
        for seed in (7, 7, 8)
    ]
    hashes = [state_hash(r.model) for r in runs]
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]
    assert torch.equal(runs[0].model.spot_bank.embeddings, runs[1].model.spot_bank.embeddings)


class _StopAfter(TrainerCallback):
    """Simulates an interrupted run: raises once the checkpoint of `step` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")


def test_resume_from_a_trainer_checkpoint_matches_an_uninterrupted_run(tmp_path):
    dataset, _, meta = tiny_her2st_dataset(32)
    spots = SpotPatchDataset(dataset)
    profile = get_profile("cpu").replace(batch_size=8, n_feature_views=1, learning_rate=1e-3)
    kwargs = {"config_overrides": SMALL, "profile": profile, "max_steps": 6, "save_steps": 2,
              "dataset_metadata": meta, "progress": False}
    full = train_model(spots, meta["gene_names"], tmp_path / "full", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train_model(spots, meta["gene_names"], tmp_path / "cut", callbacks=[_StopAfter(4)], **kwargs)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "cut" / "config.json").exists()  # no half-written checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(spots, meta["gene_names"], tmp_path / "cut", **kwargs)
    resumed = train_model(spots, meta["gene_names"], tmp_path / "cut", resume=True, **kwargs)
    assert state_hash(resumed.model) == state_hash(full.model)
    assert [h["step"] for h in resumed.history if "loss" in h] == [5, 6]
    assert not (tmp_path / "cut" / "checkpoints").exists()  # removed after success
    loaded = MclSTExpModel.from_pretrained(tmp_path / "cut")
    assert state_hash(loaded) == state_hash(full.model)
    assert torch.equal(loaded.spot_bank.embeddings, full.model.spot_bank.embeddings)


# ---------------------------------------------------------------------- features
def test_image_features_views_and_cache(tmp_path):
    dataset, _, _ = tiny_her2st_dataset(12)
    spots = SpotPatchDataset(dataset)
    set_seed(0)
    model = MclSTExpModel(build_training_config(
        [f"G{i}" for i in range(785)], config_overrides=SMALL, positions=spots.positions
    ))
    clean = compute_image_features(model, spots, progress=False)
    assert clean.shape == (1, 12, model.config.image_feature_dim)
    with torch.no_grad():
        direct = model.image_encoder.eval()(scale_pixel_values(spots.patches, "unit"))
    torch.testing.assert_close(clean[0], direct, rtol=1e-4, atol=1e-5)
    views = compute_image_features(model, spots, 2, augment=True, seed=1, progress=False)
    assert views.shape[0] == 2 and not torch.equal(views[0], views[1])
    again = compute_image_features(model, spots, 2, augment=True, seed=1, progress=False)
    assert torch.equal(views, again)  # seeded augmentation
    cache = tmp_path / "feats.safetensors"
    first = compute_image_features(model, spots, cache_path=cache, progress=False)
    stamp = cache.stat().st_mtime_ns
    assert torch.equal(compute_image_features(model, spots, cache_path=cache, progress=False), first)
    assert cache.stat().st_mtime_ns == stamp  # served from the cache
    recalibrate_batchnorm(model, spots, progress=False)  # a changed encoder ...
    changed = compute_image_features(model, spots, cache_path=cache, progress=False)
    assert not torch.equal(changed, first)  # ... never reuses the stale cache
    with pytest.raises(ValueError, match="identical views"):
        compute_image_features(model, spots, 2, augment=False, progress=False)


def test_collator_augments_training_batches_only():
    dataset, _, _ = tiny_her2st_dataset(4)
    spots = SpotPatchDataset(dataset)
    items = [spots[i] for i in range(4)]
    plain = SpotCollator("unit", augment=False)(items)
    assert set(plain) == {"pixel_values", "expression", "positions"}
    torch.testing.assert_close(plain["pixel_values"], spots.patches.float() / 255)
    torch.manual_seed(0)
    augmented = SpotCollator("unit", augment=True)(items)
    assert augmented["pixel_values"].shape == plain["pixel_values"].shape
    assert not torch.equal(augmented["pixel_values"], plain["pixel_values"])
    assert torch.equal(augmented["expression"], plain["expression"])


# ---------------------------------------------------------------------- bad input
def test_training_rejects_bad_input():
    dataset, _, meta = tiny_her2st_dataset(8)
    genes = meta["gene_names"]
    with pytest.raises(ValueError, match="no spots"):
        train_model(dataset.select([]), genes, None, config_overrides=SMALL, progress=False)
    with pytest.raises(ValueError, match="785 genes but gene_names lists 784"):
        train_model(dataset, genes[:-1], None, config_overrides=SMALL, progress=False)
    swapped = [genes[1], genes[0], *genes[2:]]
    with pytest.raises(ValueError, match="dataset's own gene list"):
        train_model(dataset, swapped, None, config_overrides=SMALL, dataset_metadata=meta,
                    progress=False)
    with pytest.raises(ValueError, match="frozen image encoder"):
        train_model(dataset, genes, None, config_overrides=SMALL, profile="paper",
                    cached_features=torch.zeros(1, 8, 512), progress=False)
    with pytest.raises(ValueError, match="cached_features must be"):
        train_model(dataset, genes, None, config_overrides=SMALL, profile="cpu",
                    cached_features=torch.zeros(1, 8, 7), progress=False)



# -------------------------------------------------------------- the model is what trains
def test_frozen_encoder_trained_from_pixels_keeps_weights_and_batchnorm_statistics():
    """The Trainer calls model.train() every step; the frozen encoder must stay in eval mode."""
    dataset, _, meta = tiny_her2st_dataset(16)
    spots = SpotPatchDataset(dataset)
    profile = get_profile("cpu").replace(n_feature_views=0, epochs=2, batch_size=8,
                                         learning_rate=1e-3)
    result = train_model(spots, meta["gene_names"], None, config_overrides=SMALL,
                         profile=profile, progress=False)
    model = result.model
    assert len([h for h in result.history if "loss" in h]) == 4  # pixels went through the model
    set_seed(0)
    initial = MclSTExpModel(model.config)
    for (name, a), (_, b) in zip(model.image_encoder.state_dict().items(),
                                 initial.image_encoder.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # running_mean / running_var included
    assert not torch.equal(model.image_projection.linear_in.weight,
                           initial.image_projection.linear_in.weight)
    assert not model._forward_pre_hooks  # the eval-mode hook ends with training


def test_intermediate_trainer_checkpoint_loads_and_predicts(tmp_path):
    """A `checkpoint-*` folder of an interrupted run is a complete predictor."""
    dataset, _, meta = tiny_her2st_dataset(16)
    spots = SpotPatchDataset(dataset)
    profile = get_profile("cpu").replace(batch_size=8, n_feature_views=1, learning_rate=1e-3)
    with pytest.raises(KeyboardInterrupt):
        train_model(spots, meta["gene_names"], tmp_path / "run", config_overrides=SMALL,
                    profile=profile, max_steps=6, save_steps=2, dataset_metadata=meta,
                    progress=False, callbacks=[_StopAfter(2)])
    folder = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert (folder / "spot_bank.safetensors").is_file()
    assert (folder / "preprocessor_config.json").is_file()
    loaded = MclSTExpModel.from_pretrained(folder)
    assert len(loaded.spot_bank) == 16
    # the bank was embedded by the very weights saved next to it
    rebuilt = loaded.build_spot_bank(spots.expression, spots.positions, attach=False)
    torch.testing.assert_close(rebuilt.embeddings, loaded.spot_bank.embeddings)
    prediction = loaded.predict_expression(
        pixel_values=scale_pixel_values(spots.patches[:3], loaded.config.pixel_scaling))
    assert prediction.expression.shape == (3, len(meta["gene_names"]))
    assert torch.isfinite(prediction.expression).all()


def test_interrupt_while_the_out_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C landing just after `--out` is created (before the call making it returns): the
    folder is still this run's own and is removed, so a rerun is not refused."""
    import mclstexp_hub.training.trainer as trainer_module

    dataset, _, meta = tiny_her2st_dataset(8)
    spots = SpotPatchDataset(dataset)
    real = trainer_module.os.makedirs

    def makes_then_interrupted(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.os, "makedirs", makes_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_model(spots, meta["gene_names"], tmp_path / "ck", config_overrides=SMALL,
                    dataset_metadata=meta, progress=False, max_steps=1)
    assert not (tmp_path / "ck").exists()
