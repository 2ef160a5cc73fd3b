"""Training-time augmentation of H&E patches (the paper's, on uint8 tensors).

The reference applies, per patch: ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5),
a random horizontal flip and a random rotation of up to 180 degrees (nearest neighbour, corners
filled with 0 = black, as torchvision's default there). Each patch draws its own parameters
(a transform applied to a whole batch tensor would give every patch the same ones), from
torch's global RNG so that a seeded run is reproducible.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def paper_augmentation() -> v2.Compose:
    """The reference's training augmentation, on a (3, H, W) uint8 tensor."""
    return v2.Compose(
        [
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomRotation(degrees=180),
        ]
    )


class PatchAugmenter:
    """Augments a uint8 batch (B, 3, H, W) patch by patch; output stays uint8."""

    def __init__(self) -> None:
        self.transform = paper_augmentation()

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dtype != torch.uint8 or patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(
                "PatchAugmenter expects uint8 patches of shape (batch, 3, height, width); got "
                f"{patches.dtype} {tuple(patches.shape)}."
            )
        return torch.stack([self.transform(patch) for patch in patches])


__all__ = ["PatchAugmenter", "paper_augmentation"]
