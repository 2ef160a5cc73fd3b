"""Training-time augmentation of H&E patches (on uint8 tensors).

Two kinds, named in `AUGMENTATIONS` and chosen by the training profile:

- "paper": the reference's transform, patch by patch (below).
- "batch": the same colour-jitter strengths with flips and 90-degree rotations, drawn per patch
  but applied to the whole batch in a few tensor operations (no per-patch Python loop, no black
  corners: H&E has no preferred orientation, and rot90 keeps every tissue pixel).

The reference applies, per patch: ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5),
a random horizontal flip and a random rotation of up to 180 degrees (nearest neighbour, corners
filled with 0 = black, as torchvision's default there). Each patch draws its own parameters
(a transform applied to a whole batch tensor would give every patch the same ones), from
torch's global RNG so that a seeded run is reproducible.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from .profiles import AUGMENTATIONS


def paper_augmentation() -> v2.Compose:
    """The reference's training augmentation, on a (3, H, W) uint8 tensor."""
    return v2.Compose(
        [
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomRotation(degrees=180),
        ]
    )


JITTER = 0.5  # brightness, contrast and saturation factors drawn from [1 - 0.5, 1 + 0.5]


class BatchAugmenter:
    """Per-patch random flips, rot90 and brightness/contrast/saturation jitter, batched.

    Factors follow torchvision's ColorJitter definitions (brightness scales, contrast blends
    with the patch's mean grey, saturation blends with the pixel's grey; clipped to [0, 255]),
    applied in a fixed order. Randomness comes from torch's global RNG (seeded runs repeat).
    `jitter`: the factors are drawn from [1 - jitter, 1 + jitter] (0 = no colour change; None =
    `JITTER`, the reference's 0.5).
    """

    def __init__(self, jitter: float | None = None) -> None:
        if jitter is not None and not 0.0 <= jitter < 1.0:
            raise ValueError(f"colour jitter must be in [0, 1); got {jitter!r}.")
        self.jitter = jitter  # None: the module's JITTER, read at each call

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        _check_patches(patches)
        n = patches.shape[0]
        x = patches.float()
        strength = JITTER if self.jitter is None else self.jitter
        low, high = 1.0 - strength, 1.0 + strength

        def factors() -> torch.Tensor:
            return torch.empty(n, 1, 1, 1).uniform_(low, high)

        x = (x * factors()).clamp_(0, 255)
        grey = _grey(x)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * factors() + mean).clamp_(0, 255)
        grey = _grey(x)
        x = ((x - grey) * factors() + grey).clamp_(0, 255)
        flip = torch.rand(n) < 0.5
        x[flip] = x[flip].flip(-1)
        turns = torch.randint(0, 4, (n,))
        if x.shape[-1] == x.shape[-2]:
            for k in (1, 2, 3):
                chosen = turns == k
                if chosen.any():
                    x[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
        return x.round_().to(torch.uint8)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of float RGB (B, 3, H, W) → (B, 1, H, W), as torchvision's rgb_to_grayscale."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _check_patches(patches: torch.Tensor) -> None:
    if patches.dtype != torch.uint8 or patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(
            "augmentation expects uint8 patches of shape (batch, 3, height, width); got "
            f"{patches.dtype} {tuple(patches.shape)}."
        )


def make_augmenter(kind: str):
    """The augmenter named `kind` (one of `AUGMENTATIONS`)."""
    if kind == "paper":
        return PatchAugmenter()
    if kind == "batch":
        return BatchAugmenter()
    raise ValueError(f"Unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}.")


class PatchAugmenter:
    """Augments a uint8 batch (B, 3, H, W) patch by patch; output stays uint8."""

    def __init__(self) -> None:
        self.transform = paper_augmentation()

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        _check_patches(patches)
        return torch.stack([self.transform(patch) for patch in patches])


__all__ = ["AUGMENTATIONS", "BatchAugmenter", "PatchAugmenter", "make_augmenter",
           "paper_augmentation"]
