"""Pixel scaling shared by training, the image processor, the pipeline and the ONNX runtime.

One function so that training and inference cannot drift apart; it takes torch tensors (training,
the image processor) and NumPy arrays (the PyTorch-free ONNX Runtime prediction path) with the
same float32 arithmetic. Hub-bound remote code; torch is imported only for tensors.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

PixelScaling = Literal["unit", "imagenet"]
PIXEL_SCALINGS: tuple[str, ...] = get_args(PixelScaling)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scale_pixel_values(images: Any, pixel_scaling: str = "unit") -> Any:
    """uint8 (B, 3, H, W) or (3, H, W) in [0, 255] → float32 model input (tensor or ndarray).

    "unit": x / 255, in [0, 1] — what the reference code feeds (ToTensor, no normalisation).
    "imagenet": (x / 255 - mean) / std with ImageNet statistics.
    """
    if pixel_scaling not in PIXEL_SCALINGS:
        raise ValueError(f"pixel_scaling must be one of {PIXEL_SCALINGS}; got {pixel_scaling!r}.")
    if images.dtype not in (np.uint8,) and str(images.dtype) != "torch.uint8":
        raise ValueError(
            f"scale_pixel_values expects uint8 pixels in [0, 255]; got dtype {images.dtype}."
        )
    shape = (3, 1, 1) if images.ndim == 3 else (1, 3, 1, 1)
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32) / np.float32(255.0)
        if pixel_scaling == "imagenet":
            mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(shape)
            std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(shape)
            x = (x - mean) / std
        return x
    import torch

    x = images.float().div_(255.0)
    if pixel_scaling == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(shape)
        std = torch.tensor(IMAGENET_STD).view(shape)
        x = (x - mean) / std
    return x
