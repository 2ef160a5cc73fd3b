"""Image processor of mclSTExp: an H&E patch → the exact tensor the image tower was trained on.

Why a processor of our own: the model was trained on patches cut at full resolution around each
spot (no resampling) and scaled by `scale_pixel_values` — "unit" ([0, 1], the reference code's
`ToTensor()` without normalisation) or "imagenet". This class records both (`patch_size`,
`pixel_scaling`) in `preprocessor_config.json` and applies the *same function* at inference, so
training and prediction cannot drift apart.

Geometry: a patch larger than `patch_size` is centre-cropped (same pixel scale as training, with
the crop aligned to the training convention: a spot at integer centre c covers
[c - size/2, c + size/2)); a smaller one is padded with white (`pad_value`, the colour of empty
glass, as the patch extractor pads slide borders). `do_resize=True` instead resamples the whole
input to `patch_size` — for patches scanned at another magnification.

The transformers-native scaling fields (`do_rescale`, `rescale_factor`, `do_normalize`,
`image_mean`, `image_std`) are derived from `pixel_scaling` and saved too, so generic tools read
the right numbers; they agree with `scale_pixel_values` to within 1e-6 (tested), and combinations
that contradict `pixel_scaling` are refused.

Hub-bound remote code: imports only third-party packages and, relatively, its siblings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs

from .pixels_mclstexp import IMAGENET_MEAN, IMAGENET_STD, PIXEL_SCALINGS, scale_pixel_values
from .slide_io_mclstexp import CROP_CONVENTION, PAD_VALUE



class MclSTExpImageProcessorKwargs(ImagesKwargs, total=False):
    """Extra processor fields saved in `preprocessor_config.json`."""

    patch_size: int | None
    pixel_scaling: str | None
    pad_value: int | None
    crop_convention: str | None


def native_scaling(pixel_scaling: str) -> dict[str, Any]:
    """transformers-native fields equivalent to `scale_pixel_values(..., pixel_scaling)`."""
    if pixel_scaling not in PIXEL_SCALINGS:
        raise ValueError(
            f"pixel_scaling must be one of {PIXEL_SCALINGS}; got {pixel_scaling!r}. It must be the "
            "scaling the model was trained with (config.pixel_scaling)."
        )
    return {
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": pixel_scaling == "imagenet",
        "image_mean": tuple(IMAGENET_MEAN),
        "image_std": tuple(IMAGENET_STD),
    }


def _check_native(pixel_scaling: str, given: dict[str, Any]) -> None:
    """Refuse native scaling fields that would not reproduce `pixel_scaling`."""
    expected = native_scaling(pixel_scaling)
    for key, want in expected.items():
        value = given.get(key)
        if value is None:
            continue
        if key in ("image_mean", "image_std"):
            if not expected["do_normalize"]:
                continue  # unused when not normalising
            ok = len(tuple(value)) == 3 and all(
                abs(float(a) - float(b)) < 1e-9 for a, b in zip(value, want, strict=False)
            )
        elif key == "rescale_factor":
            ok = abs(float(value) - want) < 1e-12
        else:
            ok = bool(value) == want
        if not ok:
            raise ValueError(
                f"MclSTExpImageProcessor: {key}={value!r} contradicts pixel_scaling="
                f"{pixel_scaling!r} (which needs {key}={want!r}). Set pixel_scaling to the model's "
                "config.pixel_scaling and leave the rescale/normalise fields at their defaults."
            )


class MclSTExpImageProcessor(TorchvisionBackend):
    r"""Crop/pad (or resize) H&E patches to `patch_size` and scale them as in training.

    Args:
        patch_size: square patch side in full-resolution pixels (the model's `config.patch_size`).
        pixel_scaling: "unit" (x / 255) or "imagenet" ((x / 255 - mean) / std), the model's
            `config.pixel_scaling`.
        pad_value: fill for pixels beyond a too-small input (255, white).
        do_resize: resample the input to `patch_size` instead of cropping (off by default: the
            model expects full-resolution pixels).
        crop_convention: how whole-slide patches are cut around spot centres (recorded so a
            checkpoint says which pixels it saw): `slide_io_mclstexp.CROP_CONVENTION`, centre =
            floor(pixel) as the authors' code. Other values are refused.
    """

    valid_kwargs = MclSTExpImageProcessorKwargs
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    patch_size = 224
    pixel_scaling = "unit"
    pad_value = PAD_VALUE
    crop_convention = CROP_CONVENTION
    do_convert_rgb = True
    do_resize = False
    resample = PILImageResampling.BILINEAR
    size: ClassVar[dict[str, int]] = {"height": 224, "width": 224}
    do_center_crop = True
    crop_size: ClassVar[dict[str, int]] = {"height": 224, "width": 224}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False
    image_mean = tuple(IMAGENET_MEAN)
    image_std = tuple(IMAGENET_STD)

    def __init__(self, patch_size: int | None = None, pixel_scaling: str | None = None, **kwargs):
        patch_size = int(patch_size if patch_size is not None else type(self).patch_size)
        if patch_size <= 0:
            raise ValueError(f"MclSTExpImageProcessor: patch_size must be positive; got {patch_size}.")
        pixel_scaling = pixel_scaling if pixel_scaling is not None else type(self).pixel_scaling
        _check_native(pixel_scaling, kwargs)
        convention = kwargs.get("crop_convention")
        if convention is not None and convention != CROP_CONVENTION:
            raise ValueError(
                f"MclSTExpImageProcessor: crop_convention={convention!r} is not this package's "
                f"{CROP_CONVENTION!r} (centre = floor(pixel)); the checkpoint was made for patches "
                "cut differently. Re-export it with the current package."
            )
        kwargs["crop_convention"] = CROP_CONVENTION
        square = {"height": patch_size, "width": patch_size}
        for key in ("size", "crop_size"):
            given = kwargs.get(key)
            if given is not None and dict(given) != square:
                raise ValueError(
                    f"MclSTExpImageProcessor: {key}={dict(given)} differs from patch_size="
                    f"{patch_size}; set patch_size only (it fixes both)."
                )
            kwargs[key] = square
        kwargs.update(native_scaling(pixel_scaling))
        super().__init__(patch_size=patch_size, pixel_scaling=pixel_scaling, **kwargs)

    @classmethod
    def from_model_config(cls, config: Any, **kwargs) -> MclSTExpImageProcessor:
        """The processor matching a model config (`patch_size`, `pixel_scaling`)."""
        return cls(patch_size=config.patch_size, pixel_scaling=config.pixel_scaling, **kwargs)

    # ------------------------------------------------------------------ geometry
    def center_crop(self, image: torch.Tensor, size: SizeDict, pad_value: int = PAD_VALUE,
                    **kwargs) -> torch.Tensor:
        """Centre crop to `size`; inputs smaller than `size` are padded with `pad_value`."""
        height, width = image.shape[-2:]
        out_h, out_w = size.height, size.width
        if height < out_h or width < out_w:
            pad_top, pad_left = max(out_h - height, 0) // 2, max(out_w - width, 0) // 2
            padded = torch.full(
                (*image.shape[:-2], max(height, out_h), max(width, out_w)),
                pad_value,
                dtype=image.dtype,
                device=image.device,
            )
            padded[..., pad_top : pad_top + height, pad_left : pad_left + width] = image
            image = padded
            height, width = image.shape[-2:]
        top, left = (height - out_h) // 2, (width - out_w) // 2
        return image[..., top : top + out_h, left : left + out_w]

    # ------------------------------------------------------------- processing
    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Any,
        image_std: Any,
        disable_grouping: bool | None,
        return_tensors: Any,
        pixel_scaling: str | None = None,
        pad_value: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        pixel_scaling = pixel_scaling or self.pixel_scaling
        _check_native(
            pixel_scaling,
            {"do_rescale": do_rescale, "rescale_factor": rescale_factor,
             "do_normalize": do_normalize, "image_mean": image_mean, "image_std": image_std},
        )
        pad_value = PAD_VALUE if pad_value is None else int(pad_value)
        for image in images:
            if image.dtype != torch.uint8:
                raise ValueError(
                    "MclSTExpImageProcessor expects 8-bit RGB images (PIL images, or uint8 arrays/"
                    f"tensors in [0, 255]); got dtype {image.dtype}. Convert floats in [0, 1] with "
                    "(x * 255).round().to(torch.uint8)."
                )
            if image.shape[0] != 3:
                raise ValueError(
                    f"MclSTExpImageProcessor expects RGB images; got {image.shape[0]} channels."
                )
        grouped, index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, stacked in grouped.items():
            if do_resize:
                stacked = self.resize(stacked, size=size, resample=resample)
            if do_center_crop:
                stacked = self.center_crop(stacked, crop_size, pad_value=pad_value)
            # The one scaling function shared with training (bit-identical by construction).
            processed[shape] = scale_pixel_values(stacked.contiguous(), pixel_scaling)
        pixel_values = reorder_images(processed, index)
        if return_tensors:
            pixel_values = torch.stack(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = ["PAD_VALUE", "MclSTExpImageProcessor", "MclSTExpImageProcessorKwargs", "native_scaling"]
