"""Slide-level prediction: spot tables, tissue tiling, AnnData output, atomic writes.

Names load lazily: `mclstexp predict` imports only what its run needs (no SciPy for a spot CSV,
no PyTorch for the ONNX Runtime path), because start-up time is part of every prediction.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_output_path": "io",
    "write_h5ad_atomic": "io",
    "PredictionResult": "predict",
    "ensure_registered": "predict",
    "load_pipeline": "predict",
    "predict_to_h5ad": "predict",
    "read_spots_csv": "spots",
    "read_visium_spots": "spots",
    "otsu_threshold": "tiling",
    "tile_spots": "tiling",
    "tissue_mask": "tiling",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_EXPORTS)
