"""MclSTExpImageProcessor: the pixels the model sees at inference equal those it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_processing_backends import TorchvisionBackend

import mclstexp_hub  # noqa: F401
from mclstexp_hub import MclSTExpConfig
from mclstexp_hub.models.mclstexp.image_processing_mclstexp import MclSTExpImageProcessor, native_scaling
from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
from mclstexp_hub.prediction.predict import ensure_registered

ALL_VALUES = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)


@pytest.mark.parametrize("scaling", ["unit", "imagenet"])
def test_native_fields_reproduce_scale_pixel_values(scaling):
    """The transformers-native rescale/normalise recorded in the config equals the shared
    scaling function for every 8-bit value within 1e-6."""
    fields = native_scaling(scaling)
    native = TorchvisionBackend.rescale_and_normalize(
        MclSTExpImageProcessor(pixel_scaling=scaling), ALL_VALUES.clone(), fields["do_rescale"],
        fields["rescale_factor"], fields["do_normalize"], fields["image_mean"], fields["image_std"],
    )
    ours = scale_pixel_values(ALL_VALUES, scaling)
    assert native.shape == ours.shape
    assert float((native.float() - ours).abs().max()) <= 1e-6


@pytest.mark.parametrize("scaling", ["unit", "imagenet"])
def test_processor_output_is_scale_pixel_values_exactly(scaling):
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    processor = MclSTExpImageProcessor(patch_size=64, pixel_scaling=scaling)
    out = processor(Image.fromarray(patch), return_tensors="pt")["pixel_values"]
    expected = scale_pixel_values(torch.from_numpy(patch).permute(2, 0, 1)[None], scaling)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 64, 64)
    assert torch.equal(out, expected)  # bit-identical: the same function as training


def test_larger_patch_is_centre_cropped_like_training_windows(her2st_dir):
    """A 256-px patch around a spot, cropped to 224, is the 224-px training patch of that spot."""
    from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide

    slide = open_slide(Path(her2st_dir) / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg")
    processor = MclSTExpImageProcessor(patch_size=224)
    for cx, cy in [(2307.86, 3500.48), (1989.71, 3506.03), (4000.5, 5000.5)]:
        big = slide.read_patch(cx, cy, 256)
        small = slide.read_patch(cx, cy, 224)
        got = processor(big, return_tensors="pt")["pixel_values"]
        want = scale_pixel_values(torch.from_numpy(small).permute(2, 0, 1)[None], "unit")
        assert torch.equal(got, want)
    slide.close()


def test_smaller_input_is_padded_white_and_resize_is_optional():
    processor = MclSTExpImageProcessor(patch_size=32)
    tiny = np.zeros((10, 10, 3), dtype=np.uint8)
    out = processor(tiny, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, 32, 32)
    assert float(out[:, 0, 0].min()) == 1.0  # white border (unit scaling: 255 → 1.0)
    assert float(out[:, 16, 16].max()) == 0.0  # the black input sits in the centre
    resized = MclSTExpImageProcessor(patch_size=32, do_resize=True)(tiny, return_tensors="pt")
    assert float(resized["pixel_values"].abs().max()) == 0.0  # resampled, not padded


def test_save_load_records_patch_size_and_scaling(tmp_path):
    ensure_registered()
    processor = MclSTExpImageProcessor(patch_size=96, pixel_scaling="imagenet")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["patch_size"] == 96 and saved["pixel_scaling"] == "imagenet"
    assert saved["do_normalize"] is True and saved["crop_size"] == {"height": 96, "width": 96}
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_mclstexp.MclSTExpImageProcessor"
    assert (tmp_path / "image_processing_mclstexp.py").is_file()
    assert (tmp_path / "pixels_mclstexp.py").is_file()  # its relative import travels too
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MclSTExpImageProcessor)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 100, 3), dtype=np.uint8))
    assert torch.equal(loaded(image, return_tensors="pt")["pixel_values"],
                       processor(image, return_tensors="pt")["pixel_values"])


def test_from_model_config_matches_config():
    config = MclSTExpConfig(gene_names=["A", "B"], image_encoder="resnet10t", patch_size=112,
                            pixel_scaling="imagenet")
    processor = MclSTExpImageProcessor.from_model_config(config)
    assert (processor.patch_size, processor.pixel_scaling) == (112, "imagenet")


def test_contradictory_or_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="do_normalize"):
        MclSTExpImageProcessor(pixel_scaling="unit", do_normalize=True)
    with pytest.raises(ValueError, match="pixel_scaling"):
        MclSTExpImageProcessor(pixel_scaling="zscore")
    with pytest.raises(ValueError, match="patch_size"):
        MclSTExpImageProcessor(patch_size=64, crop_size={"height": 32, "width": 32})
    processor = MclSTExpImageProcessor(patch_size=16)
    with pytest.raises(ValueError, match="do_normalize"):
        processor(np.zeros((16, 16, 3), np.uint8), do_normalize=True)
    with pytest.raises(ValueError, match="uint8"):
        processor(torch.rand(3, 16, 16), return_tensors="pt")
