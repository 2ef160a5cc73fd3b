"""mclSTExp's Hub-bound code: the files in this folder travel next to the weights.

Every `*_mclstexp.py` module here imports only third-party packages and, relatively, its
siblings, because `register_for_auto_class` / `save_pipeline_code` copy them flat into a
checkpoint for `trust_remote_code=True`. This `__init__` is *not* copied: it only exposes the
classes lazily (so `import mclstexp_hub.data`, which uses `slide_io_mclstexp`, never loads torch)
and registers them with transformers' Auto classes and pipeline registry (`register()`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MclSTExpConfig": "configuration_mclstexp",
    "MclSTExpModel": "modeling_mclstexp",
    "MclSTExpImageOutput": "modeling_mclstexp",
    "MclSTExpOutput": "modeling_mclstexp",
    "MclSTExpPrediction": "modeling_mclstexp",
    "MclSTExpImageProcessor": "image_processing_mclstexp",
    "MclSTExpPipeline": "pipeline_mclstexp",
    "save_pipeline_code": "pipeline_mclstexp",
    "SpotBank": "spot_bank_mclstexp",
    "open_slide": "slide_io_mclstexp",
}

TASK = "spatial-gene-expression"
_registered = False
_registering = False


def register() -> None:
    """Register config, model, image processor and pipeline with transformers (idempotent)."""
    global _registered, _registering
    if _registered or _registering:
        return
    _registering = True
    try:
        _register_all()
        _registered = True
    finally:
        _registering = False


def _register_all() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_mclstexp import MclSTExpConfig
    from .image_processing_mclstexp import MclSTExpImageProcessor
    from .modeling_mclstexp import MclSTExpModel
    from .pipeline_mclstexp import MclSTExpPipeline

    AutoConfig.register("mclstexp", MclSTExpConfig, exist_ok=True)
    AutoModel.register(MclSTExpConfig, MclSTExpModel, exist_ok=True)
    AutoImageProcessor.register(
        MclSTExpConfig,
        image_processor_classes={"torchvision": MclSTExpImageProcessor},
        exist_ok=True,
    )
    # Saving writes `auto_map` and copies this folder's modules next to the weights, so a saved
    # checkpoint loads with trust_remote_code=True where this package is not installed.
    MclSTExpConfig.register_for_auto_class()
    MclSTExpModel.register_for_auto_class("AutoModel")
    MclSTExpImageProcessor.register_for_auto_class()
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is not MclSTExpPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=MclSTExpPipeline, pt_model=AutoModel, type="image"
        )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if name != "open_slide":
        register()
    return value


__all__ = sorted(_EXPORTS) + ["TASK", "register"]
