"""Training, spot-bank building and feature caching for mclSTExp (imports the core, never the reverse).

Modules: `profiles` (paper / cpu recipes), `augment` (the paper's patch augmentation),
`torch_dataset` (decoded patches + collator), `features` (cached frozen-encoder features),
`trainer` (`train_model` with transformers.Trainer), `bank` (`build_bank_from_dataset`).
"""

from __future__ import annotations

from .profiles import DATASET_PRESETS, TrainProfile, get_profile

__all__ = ["DATASET_PRESETS", "TrainProfile", "get_profile"]
