"""Frozen image-encoder features for a benchmark, computed as few times as correctness allows.

A frozen encoder's pooled features do not depend on the fold — except through its BatchNorm
statistics when the training profile re-estimates them on patches (the cpu profile does, on
a random-init encoder whose stored statistics are meaningless). Three policies:

- ``all``: statistics estimated once on the patches of *every* benchmark section, held-out
  ones included (their images only — never their expression). One feature pass serves every
  fold. Transductive, like test-time BatchNorm adaptation; the cheap default.
- ``train``: statistics from each fold's training sections only (strictly leak-free); the
  features are recomputed per fold, so this costs about (number of folds)× more.
- ``none``: the encoder's own statistics (what the paper profile does; also right for a
  pretrained encoder).

Every feature set is produced together with the exact encoder state that produced it, saved as
a safetensors state dict, so the trained model can be given that very encoder
(`train_model(..., pretrained_encoder=path)`) and its checkpoint stays consistent with the
features it was trained on.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

BN_CALIBRATIONS = ("all", "train", "none")


@dataclass
class FoldFeatures:
    """Features of one encoder state: clean features of every spot and augmented views of
    the spots in `view_rows` (global dataset row indices)."""

    clean: torch.Tensor  # (N, F): un-augmented features of every spot of the dataset
    views: torch.Tensor | None  # (V, len(view_rows), F) augmented views, or None
    view_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    encoder_path: str = ""
    fingerprint: str = ""
    calibrated_on: tuple[str, ...] = ()

    def training_views(self, rows: np.ndarray, include_clean: bool) -> torch.Tensor:
        """(n_views, len(rows), F) for `train_model(cached_features=...)`: view 0 clean (when
        `include_clean`), then the augmented views, rows in the given order."""
        parts = [self.clean[rows][None]] if include_clean else []
        if self.views is not None:
            lookup = {int(r): i for i, r in enumerate(self.view_rows)}
            missing = [int(r) for r in rows if int(r) not in lookup]
            if missing:
                raise ValueError(f"no augmented views computed for dataset rows {missing[:5]}.")
            parts.append(self.views[:, [lookup[int(r)] for r in rows]])
        if not parts:
            raise ValueError("no feature views: include the clean view or compute augmented ones.")
        return torch.cat(parts)


class FrozenFeatureStore:
    """Computes (and caches on disk) frozen features per BatchNorm-calibration set."""

    def __init__(
        self,
        model,
        patches: torch.Tensor,
        spot_sections: Sequence[str],
        *,
        bn_calibration: str,
        n_views: int,
        cache_dir: str | os.PathLike,
        seed: int = 0,
        channels_last: bool = True,
        bf16: bool = False,
        batch_size: int = 64,
        progress: bool = True,
        view_sections: Sequence[str] | None = None,
    ) -> None:
        """`view_sections`: sections whose spots ever train (augmented views are computed only
        for them; default all)."""
        if bn_calibration not in BN_CALIBRATIONS:
            raise ValueError(
                f"bn_calibration must be one of {BN_CALIBRATIONS}; got {bn_calibration!r}."
            )
        if patches.shape[0] != len(spot_sections):
            raise ValueError(f"{patches.shape[0]} patches but {len(spot_sections)} section ids.")
        self.model = model
        self.patches = patches
        self.spot_sections = np.asarray([str(s) for s in spot_sections])
        self.bn_calibration = bn_calibration
        self.n_views = int(n_views)
        self.cache_dir = os.fspath(cache_dir)
        self.seed = seed
        self.channels_last = channels_last
        self.bf16 = bf16
        self.batch_size = batch_size
        self.progress = progress
        self.view_sections = ({str(v) for v in view_sections} if view_sections is not None
                              else set(self.spot_sections.tolist()))
        self._initial_state = copy.deepcopy(model.image_encoder.state_dict())
        self._memo: dict[tuple[str, ...], FoldFeatures] = {}

    def for_fold(self, train_sections: Sequence[str]) -> FoldFeatures:
        """Features serving a fold that trains on `train_sections`."""
        if self.bn_calibration == "train":
            key = tuple(sorted(str(s) for s in train_sections))
            view_sections = set(key)
        else:
            key = ("all",) if self.bn_calibration == "all" else ("none",)
            view_sections = self.view_sections
        if key not in self._memo:
            self._memo[key] = self._compute(key, view_sections)
        return self._memo[key]

    def _compute(self, key: tuple[str, ...], view_sections: set[str]) -> FoldFeatures:
        from mclstexp_hub.training.features import (
            compute_image_features,
            encoder_fingerprint,
            recalibrate_batchnorm,
        )

        model = self.model
        model.image_encoder.load_state_dict(self._initial_state)
        if self.channels_last:
            model.image_encoder.to(memory_format=torch.channels_last)
        if self.bn_calibration == "none":
            calibrated_on: tuple[str, ...] = ()
        else:
            calibrated_on = (
                tuple(dict.fromkeys(self.spot_sections.tolist()))
                if self.bn_calibration == "all" else key
            )
            rows = np.flatnonzero(np.isin(self.spot_sections, list(calibrated_on)))
            recalibrate_batchnorm(
                model, self.patches[torch.from_numpy(rows)], batch_size=self.batch_size,
                channels_last=self.channels_last, progress=self.progress,
            )
        tag = "-".join(key)
        os.makedirs(self.cache_dir, exist_ok=True)
        common = {"bf16": self.bf16, "channels_last": self.channels_last,
                  "progress": self.progress, "batch_size": self.batch_size, "seed": self.seed}
        clean = compute_image_features(
            model, self.patches, 1, augment=False,
            cache_path=os.path.join(self.cache_dir, f"clean-{tag}.safetensors"), **common,
        )[0]
        view_rows = np.flatnonzero(np.isin(self.spot_sections, sorted(view_sections)))
        views = None
        if self.n_views > 0:
            # One call (and one cache file) per view, each with its own augmentation seed: an
            # interrupted run on a busy machine resumes from the views already computed.
            view_patches = self.patches[torch.from_numpy(view_rows)]
            rows_tag = "-".join(sorted(view_sections))
            views = torch.cat([
                compute_image_features(
                    model, view_patches, 1, augment=True,
                    cache_path=os.path.join(self.cache_dir, f"view{v}-{tag}-{rows_tag}.safetensors"),
                    **{**common, "seed": self.seed * 1000 + 1 + v},
                )
                for v in range(self.n_views)
            ])
        encoder_path = os.path.join(self.cache_dir, f"encoder-{tag}.safetensors")
        _save_encoder(model, encoder_path)
        return FoldFeatures(
            clean=clean, views=views, view_rows=view_rows, encoder_path=encoder_path,
            fingerprint=encoder_fingerprint(model), calibrated_on=calibrated_on,
        )


def _save_encoder(model, path: str) -> None:
    """The timm encoder's state dict (weights + BatchNorm statistics) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in
             model.image_encoder.model.state_dict().items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(state, tmp, metadata={"what": "frozen image encoder used for benchmark features"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = ["BN_CALIBRATIONS", "FoldFeatures", "FrozenFeatureStore"]
