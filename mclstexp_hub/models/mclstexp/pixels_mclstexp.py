"""Pixel scaling shared by training, the image processor and the pipeline.

One function so that training and inference cannot drift apart. Hub-bound remote code.
"""

from __future__ import annotations

import torch

from .configuration_mclstexp import PIXEL_SCALINGS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scale_pixel_values(images: torch.Tensor, pixel_scaling: str = "unit") -> torch.Tensor:
    """uint8 (B, 3, H, W) or (3, H, W) in [0, 255] → float32 model input.

    "unit": x / 255, in [0, 1] — what the reference code feeds (ToTensor, no normalisation).
    "imagenet": (x / 255 - mean) / std with ImageNet statistics.
    """
    if pixel_scaling not in PIXEL_SCALINGS:
        raise ValueError(f"pixel_scaling must be one of {PIXEL_SCALINGS}; got {pixel_scaling!r}.")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"scale_pixel_values expects uint8 pixels in [0, 255]; got dtype {images.dtype}."
        )
    x = images.float().div_(255.0)
    if pixel_scaling == "imagenet":
        shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(shape)
        std = torch.tensor(IMAGENET_STD).view(shape)
        x = (x - mean) / std
    return x
