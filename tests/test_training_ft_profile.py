"""The cpu-ft profile: DenseNet frozen through a stage, its feature maps cached, later stages trained.

Synthetic data (tests/conftest.py `synthetic`), a random-init DenseNet-121 at a 32 px encoder
input, so these run on every clone.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import set_seed

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
from mclstexp_hub.training.features import compute_image_features
from mclstexp_hub.training.profiles import PROFILE_NAMES, TrainProfile, get_profile
from mclstexp_hub.training.torch_dataset import SpotPatchDataset
from mclstexp_hub.training.trainer import resolve_profile, train_model

GENES = [f"g{i}" for i in range(12)]
TINY = {"retrieval_k": 8, "encoder_input_size": 32}  # DenseNet-121 at 32 px: cheap on CPU


def _densenet(**config) -> MclSTExpModel:
    torch.manual_seed(0)
    return MclSTExpModel(MclSTExpConfig(gene_names=GENES, image_encoder="densenet121",
                                        patch_size=64, max_position=64, **config)).eval()


@pytest.fixture(scope="module")
def spots(synthetic):
    from mclstexp_hub.data.hf_dataset import load_st_dataset

    return SpotPatchDataset(load_st_dataset(synthetic.dataset))


# ------------------------------------------------------------------ the split forward
@pytest.mark.parametrize("stage", ["transition3", "denseblock2", "conv0"])
def test_split_forward_equals_the_full_forward(stage):
    model = _densenet()
    tower = model.image_encoder
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        full = tower(pixels)
        maps = tower.trunk(pixels, stage)
        split = tower.forward_from_stage(maps, stage)
        embeds = model.get_image_features(pixel_values=pixels).pooler_output
        from_maps = model.get_image_features(stage_features=maps, feature_stage=stage).pooler_output
    assert maps.ndim == 4 and maps.shape[0] == 3
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_maps, embeds, rtol=1e-5, atol=1e-6)
    assert len(tower.trunk_stages(stage)) + len(tower.head_stages(stage)) == len(tower.stage_names)


def test_transition3_maps_of_densenet121_at_224_px_are_512_x_7_x_7():
    tower = _densenet().image_encoder
    with torch.no_grad():
        maps = tower.trunk(torch.rand(1, 3, 224, 224), "transition3")
    assert tuple(maps.shape) == (1, 512, 7, 7)
    assert [n for n in tower.stage_names[-2:]] == ["denseblock4", "norm5"]


def test_cached_stage_features_are_the_trunks_maps(tmp_path):
    from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values

    model = _densenet(encoder_input_size=32)
    patches = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    cache = tmp_path / "maps.safetensors"
    maps = compute_image_features(model, patches, 1, stage="transition3", cache_path=cache,
                                  progress=False, channels_last=False)
    with torch.no_grad():
        expected = model.image_encoder.trunk(
            scale_pixel_values(patches, model.config.pixel_scaling), "transition3")
    assert maps.shape == (1, 5, *expected.shape[1:]) and maps.dtype == torch.float32
    torch.testing.assert_close(maps[0], expected)
    # the stage is part of the cache key: pooled features never come back from a maps cache
    pooled = compute_image_features(model, patches, 1, cache_path=cache, progress=False,
                                    channels_last=False)
    assert pooled.shape == (1, 5, model.image_encoder.num_features)
    again = compute_image_features(model, patches, 1, stage="transition3", cache_path=cache,
                                   progress=False, channels_last=False)
    assert again.shape == maps.shape


# ------------------------------------------------------------------ training
def test_cpu_ft_trains_the_last_block_only_and_saves_a_full_model(synthetic, spots, tmp_path):
    prof = get_profile("cpu-ft")
    assert "cpu-ft" in PROFILE_NAMES
    assert (prof.cache_stage, prof.freeze_image_encoder, prof.n_feature_views,
            prof.include_clean_view) == ("transition3", False, 2, True)
    assert prof.config_defaults() == {}  # the model's own encoder: DenseNet-121
    run = prof.replace(epochs=2, batch_size=16)
    result = train_model(spots, synthetic.genes, tmp_path / "ckpt", profile=run,
                         config_overrides=TINY, dataset_metadata=synthetic.metadata,
                         progress=False)
    model = result.model
    assert model.config.image_encoder == "densenet121"
    set_seed(run.seed)
    initial = MclSTExpModel(model.config)
    trained_state = model.image_encoder.model.features.state_dict()
    initial_state = initial.image_encoder.model.features.state_dict()
    trunk = {"conv0", "norm0", "pool0", "denseblock1", "transition1", "denseblock2",
             "transition2", "denseblock3", "transition3"}
    for name, value in trained_state.items():
        if name.split(".")[0] in trunk:  # weights and BatchNorm statistics alike
            assert torch.equal(value, initial_state[name]), f"frozen trunk changed: {name}"
    changed = [n for n, p in model.image_encoder.model.features.denseblock4.named_parameters()
               if not torch.equal(p, initial.image_encoder.model.features.denseblock4
                                  .get_parameter(n))]
    assert changed, "denseblock4's weights did not change"
    features = model.image_encoder.model.features
    assert not any(p.requires_grad for p in features.transition3.parameters())
    assert all(p.requires_grad for p in features.denseblock4.parameters())
    assert all(p.requires_grad for p in features.norm5.parameters())

    info = json.loads((tmp_path / "ckpt" / "training_info.json").read_text())
    assert info["profile"]["cache_stage"] == "transition3"
    assert info["cached_feature_stage"] == "transition3"
    assert info["cached_feature_views"] == 3  # clean + 2 augmented
    assert 0 < info["trainable_parameters"]["image_encoder"] < sum(
        p.numel() for p in model.image_encoder.parameters())

    # the saved checkpoint is a normal full model: pixels in, the trained tower's features out
    loaded = MclSTExpModel.from_pretrained(tmp_path / "ckpt").eval()
    pixels = torch.rand(4, 3, synthetic.patch_size, synthetic.patch_size)
    with torch.no_grad():
        ours = model.eval().get_image_features(pixel_values=pixels).pooler_output
        theirs = loaded.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_cached_maps_train_the_same_model_as_the_trunk_would_see(synthetic, spots):
    """The maps the trainer caches are exactly the trained model's trunk on the clean patches."""
    run = get_profile("cpu-ft").replace(epochs=1, batch_size=16, n_feature_views=0)
    result = train_model(spots, synthetic.genes, None, profile=run, config_overrides=TINY,
                         dataset_metadata=synthetic.metadata, progress=False)
    model = result.model.eval()
    maps = compute_image_features(model, spots, 1, stage="transition3", progress=False)[0]
    clean = compute_image_features(model, spots, 1, progress=False)[0]
    with torch.no_grad():
        from_maps = model.image_encoder.forward_from_stage(maps, "transition3")
    torch.testing.assert_close(from_maps, clean, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ bad values
def test_bad_cache_stage_settings_are_refused():
    with pytest.raises(ValueError, match="contradicts freeze_image_encoder=True"):
        TrainProfile(name="x", epochs=1, cache_stage="transition3", freeze_image_encoder=True)
    with pytest.raises(ValueError, match="must be an encoder stage name"):
        TrainProfile(name="x", epochs=1, cache_stage=" ")
    with pytest.raises(ValueError, match="must be an encoder stage name"):
        TrainProfile(name="x", epochs=1, cache_stage=3)
    with pytest.raises(ValueError, match="needs cached views"):
        TrainProfile(name="x", epochs=1, cache_stage="transition3", include_clean_view=False,
                     n_feature_views=0)
    with pytest.raises(ValueError, match="only valid"):
        TrainProfile(name="x", epochs=1, n_feature_views=2)  # no cache_stage, not frozen
    with pytest.raises(ValueError, match="cpu-ft"):
        get_profile("cpu-fine")  # the message lists the profiles


@pytest.mark.parametrize(("stage", "encoder", "message"), [
    ("transition9", None, "Unknown encoder stage 'transition9'; the stages are"),
    ("norm5", None, "is the encoder's last stage"),
    ("transition3", "resnet10t", "cannot be split into stages"),
])
def test_unusable_stages_and_encoders_are_refused(synthetic, spots, stage, encoder, message):
    run = get_profile("cpu-ft").replace(epochs=1, cache_stage=stage)
    overrides = {**TINY, **({"image_encoder": encoder} if encoder else {})}
    with pytest.raises(ValueError, match=message):
        train_model(spots, synthetic.genes, None, profile=run, config_overrides=overrides,
                    dataset_metadata=synthetic.metadata, progress=False)


def test_pooled_cached_features_are_refused_for_a_cache_stage_profile(synthetic, spots):
    with pytest.raises(ValueError, match="caches its own feature maps"):
        train_model(spots, synthetic.genes, None, profile="cpu-ft",
                    cached_features=torch.zeros(1, len(spots), 1024), progress=False)


def test_an_explicit_freeze_choice_replaces_partial_fine_tuning():
    frozen = resolve_profile("cpu-ft", "her2st", freeze_image_encoder=True)
    assert frozen.freeze_image_encoder and frozen.cache_stage is None
    assert frozen.n_feature_views == 2
    e2e = resolve_profile("cpu-ft", "her2st", freeze_image_encoder=False)
    assert not e2e.freeze_image_encoder and e2e.cache_stage is None and e2e.n_feature_views == 0
    same = resolve_profile("cpu-ft", "her2st", epochs=3)
    assert same.cache_stage == "transition3" and same.epochs == 3


def test_the_frozen_ablation_applies_to_cpu_ft():
    """Frozen, cpu-ft's encoder is the cpu recipe: the ablation gives that comparison in one run."""
    from mclstexp_hub.benchmark.methods import MethodSettings, frozen_ablation_profile, get_method

    prof = get_profile("cpu-ft")
    settings = MethodSettings(profile=prof, retrieval_k=200, retrieval_weighting="inverse_square",
                              retrieval_distance="l1", baseline_k=200, ridge_alpha="cv")
    assert get_method("frozen_encoder_ablation").applies(settings)
    ablation = frozen_ablation_profile(prof)
    assert ablation.freeze_image_encoder and ablation.cache_stage is None
