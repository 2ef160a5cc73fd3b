"""Torch views of a patch dataset: decoded patches, expression and positions as tensors.

`load_st_dataset` returns a `datasets.Dataset` whose `image` column holds PNG bytes. Decoding a
PNG costs more than a training step's share of augmentation, so `SpotPatchDataset` decodes every
patch once, into one uint8 (N, 3, H, W) tensor kept in RAM (834 HER2+ spots ≈ 125 MB), and
serves slices of it; augmentation and pixel scaling happen in the collator, per batch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

REQUIRED_COLUMNS = ("expression", "position")


def _check_columns(dataset: Any, needed: Sequence[str]) -> None:
    names = list(getattr(dataset, "column_names", None) or [])
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(
            f"The dataset lacks column(s) {missing} (it has {names}). Use a patch dataset built by "
            "`mclstexp data build` and loaded with `load_st_dataset`."
        )


def dataset_arrays(dataset: Any) -> dict[str, Any]:
    """Expression (N, G) float32, positions (N, 2) int64 and id columns, without images."""
    if isinstance(dataset, SpotPatchDataset):
        return {
            "expression": dataset.expression,
            "positions": dataset.positions,
            "section": list(dataset.sections),
            "patient": list(dataset.patients),
            "spot_id": list(dataset.spot_ids),
        }
    _check_columns(dataset, REQUIRED_COLUMNS)
    n = len(dataset)
    if n == 0:
        raise ValueError(
            "The dataset has no spots (empty dataset or no rows for the requested sections); "
            "check --sections / the section filter and the dataset folder."
        )
    table = dataset.with_format("numpy", columns=list(REQUIRED_COLUMNS))
    expression = np.asarray(table["expression"], dtype=np.float32)
    positions = np.asarray(table["position"], dtype=np.int64)
    if expression.ndim != 2 or positions.shape != (n, 2):
        raise ValueError(
            f"Dataset columns have unexpected shapes: expression {expression.shape}, position "
            f"{positions.shape}; expected (n_spots, n_genes) and (n_spots, 2)."
        )
    if not np.isfinite(expression).all():
        raise ValueError("The dataset's `expression` column contains NaN or inf values.")
    out: dict[str, Any] = {
        "expression": torch.from_numpy(expression),
        "positions": torch.from_numpy(positions),
    }
    names = dataset.column_names
    for column in ("section", "patient", "spot_id"):
        out[column] = [str(v) for v in dataset[column]] if column in names else []
    return out


def decode_patches(dataset: Any, progress: bool = False) -> torch.Tensor:
    """Every `image` of the dataset as one uint8 (N, 3, H, W) tensor (decoded exactly once)."""
    import datasets

    _check_columns(dataset, ("image",))
    raw = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    n = len(raw)
    if n == 0:
        raise ValueError("The dataset has no spots; nothing to decode.")
    iterator = range(n)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="decode patches", unit="spot", leave=False)
    out: torch.Tensor | None = None
    for i in iterator:
        cell = raw[i]["image"]
        data = cell.get("bytes")
        if data is None:
            with open(cell["path"], "rb") as handle:
                data = handle.read()
        with Image.open(io.BytesIO(data)) as img:
            array = np.array(img.convert("RGB"), dtype=np.uint8)
        if out is None:
            out = torch.empty((n, 3, array.shape[0], array.shape[1]), dtype=torch.uint8)
        if array.shape[:2] != tuple(out.shape[2:]):
            raise ValueError(
                f"Patch {i} is {array.shape[1]}x{array.shape[0]} px but patch 0 is "
                f"{out.shape[3]}x{out.shape[2]}; a dataset must hold patches of one size."
            )
        out[i] = torch.from_numpy(array).permute(2, 0, 1)
    assert out is not None
    return out


class SpotPatchDataset(torch.utils.data.Dataset):
    """Spots as tensors: uint8 (3, H, W) patch, float32 expression (G,), int64 position (2,)."""

    def __init__(self, dataset: Any, decode_images: bool = True, progress: bool = False) -> None:
        arrays = dataset_arrays(dataset)
        self.expression: torch.Tensor = arrays["expression"]
        self.positions: torch.Tensor = arrays["positions"]
        self.sections: list[str] = arrays["section"]
        self.patients: list[str] = arrays["patient"]
        self.spot_ids: list[str] = arrays["spot_id"]
        self.patches: torch.Tensor | None = (
            decode_patches(dataset, progress=progress) if decode_images else None
        )

    @classmethod
    def from_tensors(
        cls,
        patches: torch.Tensor | None,
        expression: torch.Tensor,
        positions: torch.Tensor,
        sections: Sequence[str] = (),
    ) -> SpotPatchDataset:
        """Build directly from tensors (patches uint8 (N, 3, H, W) or None)."""
        self = cls.__new__(cls)
        self.expression = torch.as_tensor(expression, dtype=torch.float32)
        self.positions = torch.as_tensor(positions, dtype=torch.int64)
        self.patches = patches
        self.sections = list(sections)
        self.patients = []
        self.spot_ids = []
        if patches is not None and (patches.dtype != torch.uint8 or patches.ndim != 4):
            raise ValueError("patches must be a uint8 (N, 3, H, W) tensor.")
        return self

    @property
    def n_genes(self) -> int:
        return int(self.expression.shape[1])

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "expression": self.expression[index],
            "positions": self.positions[index],
        }
        if self.patches is not None:
            item["pixels"] = self.patches[index]
        return item


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Spots with precomputed encoder features: `views` is (n_views, feature_dim) per spot —
    or, with `stage` (partial fine-tuning), (n_views, C, h, w) feature maps after that stage."""

    def __init__(
        self, features: torch.Tensor, expression: torch.Tensor, positions: torch.Tensor,
        stage: str | None = None,
    ) -> None:
        if (features.ndim != 3) if stage is None else (features.ndim < 4):
            raise ValueError(
                "cached features must be (n_views, n_spots, feature_dim)"
                + ("" if stage is None else " feature maps (n_views, n_spots, C, h, w)")
                + f"; got {tuple(features.shape)}."
            )
        if features.shape[1] != expression.shape[0]:
            raise ValueError(
                f"cached features describe {features.shape[1]} spots but the training data has "
                f"{expression.shape[0]}; pass the features of exactly the training spots, in "
                "dataset order (e.g. all_features[:, train_indices])."
            )
        self.features = features if stage is not None else features.float()
        self.stage = stage
        self.expression = expression
        self.positions = positions

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "views": self.features[:, index],
            "expression": self.expression[index],
            "positions": self.positions[index],
        }


class SpotCollator:
    """Stack items into the model's inputs; augment (training only) and scale pixels.

    Patch items → {"pixel_values", "expression", "positions"}; cached-feature items →
    {"image_features", "expression", "positions"}, one random cached view per spot when
    `augment` (view 0, the clean one, otherwise). With `feature_stage` (cached feature maps
    after that encoder stage) the chosen views go out as {"stage_features", "feature_stage"}.
    """

    def __init__(
        self, pixel_scaling: str = "unit", augment: bool = False, channels_last: bool = False,
        augmentation: str = "paper", feature_stage: str | None = None,
    ) -> None:
        from ..models.mclstexp.pixels_mclstexp import PIXEL_SCALINGS

        if pixel_scaling not in PIXEL_SCALINGS:
            raise ValueError(f"pixel_scaling must be one of {PIXEL_SCALINGS}; got {pixel_scaling!r}.")
        self.pixel_scaling = pixel_scaling
        self.augment = augment
        self.channels_last = channels_last
        self.feature_stage = feature_stage
        self._augmenter = None
        if augment:
            from .augment import make_augmenter

            self._augmenter = make_augmenter(augmentation)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from ..models.mclstexp.pixels_mclstexp import scale_pixel_values

        batch = {
            "expression": torch.stack([it["expression"] for it in items]).float(),
            "positions": torch.stack([it["positions"] for it in items]).long(),
        }
        if "views" in items[0]:
            views = torch.stack([it["views"] for it in items])  # (B, V, D)
            if self.augment and views.shape[1] > 1:
                chosen = torch.randint(views.shape[1], (views.shape[0],))
            else:
                chosen = torch.zeros(views.shape[0], dtype=torch.long)
            chosen_views = views[torch.arange(views.shape[0]), chosen]
            if self.feature_stage is None:
                batch["image_features"] = chosen_views
                return batch
            maps = chosen_views.float()
            if self.channels_last and maps.ndim == 4:
                maps = maps.contiguous(memory_format=torch.channels_last)
            batch["stage_features"] = maps
            batch["feature_stage"] = self.feature_stage
            return batch
        pixels = torch.stack([it["pixels"] for it in items])
        if self._augmenter is not None:
            pixels = self._augmenter(pixels)
        pixel_values = scale_pixel_values(pixels, self.pixel_scaling)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        batch["pixel_values"] = pixel_values
        return batch


__all__ = [
    "CachedFeatureDataset",
    "SpotCollator",
    "SpotPatchDataset",
    "dataset_arrays",
    "decode_patches",
]
