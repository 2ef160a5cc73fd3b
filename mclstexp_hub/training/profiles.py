"""Training profiles: the paper's recipe and a CPU recipe, both fully overridable.

`paper` reproduces the authors' schedule (end-to-end, trainable DenseNet-121, AdamW 1e-4 /
1e-3, batch 128, 90 epochs on HER2+/cSCC). On a 2-core CPU one epoch over three HER2+ sections
takes minutes and 90 of them most of a day, so `cpu` is a *different* recipe, documented as a
deviation (docs/training.md): the image encoder is frozen, its pooled features are computed
once for the clean patch and a few augmented views of each training patch, and only
the spot tower and the two projection heads are trained, for 150 cheap epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..presets import list_presets

# Per-dataset settings of the paper (retrieval k, end-to-end epochs): a view of the one
# dataset registry, mclstexp_hub.presets, kept as a dict for existing callers.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    p.name: {"retrieval_k": p.retrieval_k, "epochs": p.epochs} for p in list_presets()
}

PROFILE_NAMES = ("paper", "cpu", "cpu-e2e", "cpu-ft")
AUGMENTATIONS = ("paper", "batch")  # implemented in training/augment.py (torch); named here


@dataclass(frozen=True)
class TrainProfile:
    """Every knob of a training run that a profile fixes (and a user may override).

    n_feature_views: augmented views per training spot whose pooled encoder features are
        cached once (frozen-encoder mode only; 0 = do not cache, run the encoder every step).
    include_clean_view: add the un-augmented view to the cached views.
    recalibrate_batchnorm: before caching features, re-estimate the frozen encoder's BatchNorm
        statistics on the training patches (forward passes in train mode, no gradients).
    channels_last: run the image encoder in channels-last memory format (same numbers, faster
        convolutions on CPU).
    augmentation: "paper" (the reference's per-patch transform) or "batch" (flips, rot90 and
        colour jitter drawn per patch, applied batched; training/augment.py).
    image_encoder / encoder_input_size: model-config defaults the profile brings (None = the
        config's own); an explicit config override wins.
    cache_stage: partial fine-tuning (None = off). The image encoder is frozen up to and
        including this stage (a DenseNet `features` stage name, e.g. "transition3"); its feature
        maps after that stage are computed once for the clean view (include_clean_view) and
        `n_feature_views` augmented views of each training spot and cached, and the stages after
        it (DenseNet-121: denseblock4 + norm5) train together with both heads and the spot
        tower on those maps. Needs freeze_image_encoder=False (the encoder is partly trained).
    micro_batch: run the image tower's forward and backward on slices of this many patches
        while the contrastive loss still compares the whole batch (gradients cached at the
        embeddings, training/micro_batch.py): the tower's activation memory is that of one
        slice. BatchNorm then normalises per slice. None = the whole batch at once. Only for
        training from pixels (an image tower that trains end to end).
    grad_checkpointing: recompute the image tower's activations in the backward pass (less
        memory, some recomputation). None = auto (`grad_checkpointing_choice`): on where the
        tower trains from pixels on a CPU, where memory is the limit; True/False as given.
    """

    name: str
    epochs: int
    batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    freeze_image_encoder: bool = False
    n_feature_views: int = 0
    include_clean_view: bool = True
    recalibrate_batchnorm: bool = False
    augment: bool = True
    bf16: bool = False
    grad_checkpointing: bool | None = None
    channels_last: bool = True
    augmentation: str = "paper"
    image_encoder: str | None = None
    encoder_input_size: int | None = None
    cache_stage: str | None = None
    micro_batch: int | None = None
    seed: int = 0

    def grad_checkpointing_choice(self, cuda: bool) -> tuple[bool, str]:
        """(checkpointing on?, why) for this profile on a CUDA device or a CPU.

        An explicit True/False is used as given. Auto (None) turns it on only where the image
        tower trains from pixels in whole batches on a CPU: there activations are most of the
        peak memory (DenseNet-121, batch 64, bf16, README run 12: 5.59 GiB without, 3.19 GiB
        with, for 26 % fewer spots/s — 8.39 against 11.4, still 2.8x the reference code). Elsewhere it is off: a frozen or cached encoder keeps no tower
        activations, a micro-batch already bounds them, and on CUDA speed comes first.
        """
        if self.grad_checkpointing is not None:
            return bool(self.grad_checkpointing), "given explicitly"
        if self.freeze_image_encoder or self.cache_stage is not None:
            return False, "auto: the image tower does not train from pixels"
        if self.micro_batch is not None:
            return False, f"auto: --micro-batch {self.micro_batch} already bounds the tower's activations"
        if cuda:
            return False, "auto: off on CUDA (speed first; pass --grad-checkpointing when memory is short)"
        return True, "auto: the image tower trains from pixels on a CPU, where memory is the limit"

    def config_defaults(self) -> dict[str, Any]:
        """The model-config values this profile sets (applied below explicit overrides)."""
        return {name: getattr(self, name) for name in ("image_encoder", "encoder_input_size")
                if getattr(self, name) is not None}

    def replace(self, **changes: Any) -> TrainProfile:
        """A copy with `changes` applied (None values are ignored: "not overridden")."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"TrainProfile has no field(s) {unknown}.")
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainProfile.{name} must be a positive integer; got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainProfile.learning_rate must be > 0; got {self.learning_rate!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"TrainProfile.weight_decay must be >= 0; got {self.weight_decay!r}.")
        if self.n_feature_views < 0:
            raise ValueError(
                f"TrainProfile.n_feature_views must be >= 0; got {self.n_feature_views!r}."
            )
        if self.micro_batch is not None:
            value = self.micro_batch
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"TrainProfile.micro_batch (--micro-batch) must be a positive integer; got {value!r}."
                )
            if value > self.batch_size:
                raise ValueError(
                    f"--micro-batch {value} exceeds the batch size {self.batch_size}; give a "
                    "micro-batch no larger than --batch-size (or leave it out)."
                )
            if self.freeze_image_encoder or self.cache_stage is not None:
                raise ValueError(
                    f"--micro-batch splits the image tower's backward pass, but profile "
                    f"{self.name!r} does not train the image tower from pixels (frozen encoder or "
                    "cache_stage); "
                    "drop --micro-batch, or train end to end (--profile paper / cpu-e2e)."
                )
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"TrainProfile.augmentation must be one of {AUGMENTATIONS}; got {self.augmentation!r}."
            )
        if self.cache_stage is not None:
            if not isinstance(self.cache_stage, str) or not self.cache_stage.strip():
                raise ValueError(
                    "TrainProfile.cache_stage must be an encoder stage name such as "
                    f"'transition3' (or None); got {self.cache_stage!r}."
                )
            if self.freeze_image_encoder:
                raise ValueError(
                    "TrainProfile.cache_stage (partial fine-tuning: the stages after it train) "
                    "contradicts freeze_image_encoder=True; set one or the other."
                )
            if not self.include_clean_view and self.n_feature_views == 0:
                raise ValueError(
                    "TrainProfile.cache_stage needs cached views to train on: "
                    "include_clean_view=True and/or n_feature_views > 0."
                )
        elif self.n_feature_views and not self.freeze_image_encoder:
            raise ValueError(
                "TrainProfile.n_feature_views > 0 caches encoder features, which is only valid "
                "with freeze_image_encoder=True (or with a cache_stage)."
            )


# The CPU end-to-end recipe: the image tower learns from expression on a 2-core CPU. A small
# encoder (ResNet-18, random init) sees the 224 px spot patch resampled to 64 px (0.15 GMAC per
# patch against DenseNet-121's 2.9 GMAC at 224 px); batch 32 gives four times the optimiser steps of batch 128 for the same compute; a
# cosine schedule with warm-up lets a short run settle. Measured (docs/training.md): on HER2+
# (train C2 C3 C4, held out B4) it reached PCC(ACG) 0.183 / PCC(HEG) 0.050 against 0.281 /
# 0.189 for top-k on frozen random DenseNet-121 features, so `cpu` stays the default.
CPU_E2E: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "weight_decay": 1e-3,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.05,
    "freeze_image_encoder": False,
    "augmentation": "batch",
    "image_encoder": "resnet18",
    "encoder_input_size": 64,
}

# Partial fine-tuning on CPU: DenseNet-121 (the model's own encoder, random init) frozen through
# `transition3`; its 512 x 7 x 7 maps (at 224 px) are cached once for the clean patch + 2
# augmented views of each training spot, and denseblock4 + norm5 (pool, both heads, spot
# tower) train on them: a trained image tower at a fraction of end-to-end cost (denseblock4
# is about a tenth of DenseNet-121's multiply-adds). One learning rate for everything (the
# block is random-init, not pretrained, so there is nothing to protect with a smaller one).
CPU_FT: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 128,
    "learning_rate": 1e-4,
    "weight_decay": 1e-3,
    "freeze_image_encoder": False,
    "cache_stage": "transition3",
    "n_feature_views": 2,
    "include_clean_view": True,
    "recalibrate_batchnorm": False,
}


def _preset(dataset_preset: str) -> dict[str, Any]:
    if dataset_preset not in DATASET_PRESETS:
        raise ValueError(
            f"Unknown dataset preset {dataset_preset!r}; choose one of {sorted(DATASET_PRESETS)} "
            "(it sets the paper's retrieval k and epoch count)."
        )
    return DATASET_PRESETS[dataset_preset]


def get_profile(name: str, dataset_preset: str = "her2st") -> TrainProfile:
    """The named profile for a dataset preset.

    paper: the authors' settings (epochs from the preset).
    cpu: frozen image encoder (its own initialisation, or weights from --pretrained-encoder),
        pooled features cached once for the clean patch + 2 augmented views of each training
        spot, spot tower + both heads trained for 150 epochs at the paper's learning rate,
        one random cached view per spot per epoch. Chosen by measurement on HER2+ (train C2,
        C3, C4; test B4), see docs/training.md: re-estimating BatchNorm statistics and a 10x
        learning rate both made the held-out PCC worse, augmented views made it better.
    cpu-e2e: end to end on CPU — `CPU_E2E` above (ResNet-18 at 64 px, trained with the spot
        tower, per-step batched augmentation).
    cpu-ft: partial fine-tuning — `CPU_FT` above (DenseNet-121 frozen through transition3, its
        feature maps cached for the clean patch + 2 augmented views; denseblock4 + norm5, the
        heads and the spot tower trained on them). The checkpoint is a normal full model.
    """
    preset = _preset(dataset_preset)
    if name == "paper":
        return TrainProfile(name="paper", epochs=int(preset["epochs"]))
    if name == "cpu":
        return TrainProfile(
            name="cpu",
            epochs=150,
            learning_rate=1e-4,
            freeze_image_encoder=True,
            n_feature_views=2,
            include_clean_view=True,
            recalibrate_batchnorm=False,
        )
    if name == "cpu-e2e":
        return TrainProfile(name="cpu-e2e", **CPU_E2E)
    if name == "cpu-ft":
        return TrainProfile(name="cpu-ft", **CPU_FT)
    raise ValueError(f"Unknown training profile {name!r}; choose one of {PROFILE_NAMES}.")


__all__ = ["CPU_E2E", "CPU_FT", "DATASET_PRESETS", "PROFILE_NAMES", "TrainProfile", "get_profile"]
