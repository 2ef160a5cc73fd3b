"""The CPU end-to-end profile: the image tower learns, at a reduced encoder input size.

Synthetic data (tests/conftest.py `synthetic`), so these run on every clone.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import set_seed

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.benchmark.methods import frozen_ablation_profile, get_method
from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig, MclSTExpConfigError
from mclstexp_hub.training import augment
from mclstexp_hub.training.augment import BatchAugmenter, make_augmenter
from mclstexp_hub.training.profiles import TrainProfile, get_profile
from mclstexp_hub.training.torch_dataset import SpotPatchDataset
from mclstexp_hub.training.trainer import train_model

GENES = [f"g{i}" for i in range(12)]


def _patches(n: int = 6, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------ encoder input size
def test_encoder_sees_patches_resampled_to_encoder_input_size():
    torch.manual_seed(0)
    small = MclSTExpModel(MclSTExpConfig(gene_names=GENES, image_encoder="resnet10t",
                                         patch_size=64, encoder_input_size=32,
                                         max_position=64)).eval()
    as_cut = MclSTExpModel(MclSTExpConfig(gene_names=GENES, image_encoder="resnet10t",
                                          patch_size=64, max_position=64)).eval()
    as_cut.load_state_dict(small.state_dict())
    pixels = torch.rand(3, 3, 64, 64)
    resized = F.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        out = small.get_image_features(pixel_values=pixels)
        ref = as_cut.get_image_features(pixel_values=resized)
        full = as_cut.get_image_features(pixel_values=pixels)
        channels_last = small.get_image_features(
            pixel_values=pixels.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.pooler_output, ref.pooler_output)
    assert out.last_hidden_state.shape[-1] == ref.last_hidden_state.shape[-1] == 1
    assert full.last_hidden_state.shape[-1] == 2  # without it the encoder sees 64 px
    torch.testing.assert_close(channels_last.pooler_output, out.pooler_output, rtol=1e-4, atol=1e-5)


def test_encoder_input_size_is_checked_and_saved(tmp_path):
    with pytest.raises(MclSTExpConfigError, match="encoder_input_size must be >= 32"):
        MclSTExpConfig(gene_names=GENES, encoder_input_size=16)
    with pytest.raises(MclSTExpConfigError, match="encoder_input_size"):
        MclSTExpConfig(gene_names=GENES, encoder_input_size=0)
    config = MclSTExpConfig(gene_names=GENES, image_encoder="resnet10t", encoder_input_size=96)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["encoder_input_size"] == 96
    assert MclSTExpConfig.from_pretrained(tmp_path).encoder_input_size == 96


# ------------------------------------------------------------------ batched augmentation
def test_batch_augmenter_is_seeded_per_patch_and_keeps_dtype():
    patches = _patches().repeat(2, 1, 1, 1)[:6]
    patches[1] = patches[0]  # two identical patches get their own random parameters
    torch.manual_seed(1)
    a = BatchAugmenter()(patches)
    torch.manual_seed(1)
    b = BatchAugmenter()(patches)
    assert a.dtype == torch.uint8 and a.shape == patches.shape
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, patches)
    with pytest.raises(ValueError, match="uint8 patches"):
        BatchAugmenter()(patches.float())


def test_batch_augmenter_geometry_only_rotates_and_flips(monkeypatch):
    """With the jitter switched off, each output is one of the 8 flips/rotations of its input."""
    monkeypatch.setattr(augment, "JITTER", 0.0)
    patches = _patches(n=16, size=20, seed=2)
    torch.manual_seed(3)
    out = BatchAugmenter()(patches)
    seen_changed = 0
    for x, y in zip(patches, out, strict=True):
        variants = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
        assert any(torch.equal(y, v) for v in variants)
        seen_changed += not torch.equal(x, y)
    assert seen_changed > 0


def test_augmentation_names_are_checked():
    assert isinstance(make_augmenter("paper"), augment.PatchAugmenter)
    assert isinstance(make_augmenter("batch"), BatchAugmenter)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        TrainProfile(name="x", epochs=1, augmentation="mixup")


# ------------------------------------------------------------------ the profile trains the tower
def test_cpu_e2e_profile_trains_the_image_tower_and_records_its_choices(synthetic, tmp_path):
    from mclstexp_hub.data.hf_dataset import load_st_dataset

    prof = get_profile("cpu-e2e")
    assert not prof.freeze_image_encoder and prof.augmentation == "batch"
    assert prof.config_defaults() == {"image_encoder": "resnet18", "encoder_input_size": 64}
    spots = SpotPatchDataset(load_st_dataset(synthetic.dataset))
    run = prof.replace(epochs=1, batch_size=16, encoder_input_size=32)
    result = train_model(spots, synthetic.genes, tmp_path / "ckpt", profile=run,
                         config_overrides={"image_encoder": "resnet10t", "retrieval_k": 8},
                         dataset_metadata=synthetic.metadata, progress=False)
    model = result.model
    # the explicit override wins over the profile's encoder; the profile's input size is used
    assert model.config.image_encoder == "resnet10t" and model.config.encoder_input_size == 32
    set_seed(run.seed)
    initial = MclSTExpModel(model.config)
    changed = [name for (name, a), (_, b) in zip(
        model.image_encoder.named_parameters(), initial.image_encoder.named_parameters(),
        strict=True) if not torch.equal(a, b)]
    assert changed, "the image tower's weights did not change"
    info = json.loads((tmp_path / "ckpt" / "training_info.json").read_text())
    assert info["profile"]["augmentation"] == "batch"
    assert info["profile"]["encoder_input_size"] == 32
    # checkpointing left to auto: on for a tower trained from pixels on a CPU, and recorded
    cuda = torch.cuda.is_available()
    assert info["grad_checkpointing"]["requested"] == "auto"
    assert info["grad_checkpointing"]["enabled"] is (not cuda) is info["profile"]["grad_checkpointing"]
    assert model.gradient_checkpointing is (not cuda)
    loaded = MclSTExpModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.encoder_input_size == 32


def test_grad_checkpointing_auto_is_on_only_for_a_tower_trained_from_pixels_on_cpu():
    e2e = get_profile("cpu-e2e")
    assert e2e.grad_checkpointing is None  # auto
    assert e2e.grad_checkpointing_choice(cuda=False)[0] is True
    assert e2e.grad_checkpointing_choice(cuda=True)[0] is False
    assert get_profile("cpu").grad_checkpointing_choice(cuda=False)[0] is False  # frozen tower
    assert get_profile("cpu-ft").grad_checkpointing_choice(cuda=False)[0] is False  # cached trunk
    on, why = e2e.replace(micro_batch=8).grad_checkpointing_choice(cuda=False)
    assert on is False and "--micro-batch 8" in why
    # an explicit value is used as given, on either device
    for value in (True, False):
        for cuda in (True, False):
            assert e2e.replace(grad_checkpointing=value).grad_checkpointing_choice(cuda) == (
                value, "given explicitly")


def test_frozen_ablation_keeps_the_profiles_encoder_and_freezes_it():
    prof = get_profile("cpu-e2e").replace(seed=4)
    ablation = frozen_ablation_profile(prof)
    assert ablation.freeze_image_encoder and ablation.n_feature_views > 0
    assert (ablation.image_encoder, ablation.encoder_input_size, ablation.seed) == (
        "resnet18", 64, 4)
    method = get_method("frozen_encoder_ablation")
    from mclstexp_hub.benchmark.methods import MethodSettings

    settings = MethodSettings(profile=prof, retrieval_k=200, retrieval_weighting="inverse_square",
                              retrieval_distance="l1", baseline_k=200, ridge_alpha="cv")
    assert method.applies(settings)
    assert not method.applies(MethodSettings(**{**settings.__dict__, "profile": get_profile("cpu")}))
