"""Slide-level prediction: spot tables, tissue tiling, AnnData output, atomic writes.

Names load lazily: `mclstexp predict` imports only what its run needs (no SciPy for a spot CSV,
no PyTorch for the ONNX Runtime path), because start-up time is part of every prediction.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
