"""Slide-level prediction: spot tables, tissue tiling, AnnData output, atomic writes."""

from __future__ import annotations

from .io import check_output_path, write_h5ad_atomic
from .predict import PredictionResult, ensure_registered, load_pipeline, predict_to_h5ad
from .spots import read_spots_csv, read_visium_spots
from .tiling import otsu_threshold, tile_spots, tissue_mask

__all__ = [
    "PredictionResult",
    "check_output_path",
    "ensure_registered",
    "load_pipeline",
    "otsu_threshold",
    "predict_to_h5ad",
    "read_spots_csv",
    "read_visium_spots",
    "tile_spots",
    "tissue_mask",
    "write_h5ad_atomic",
]
