"""Evaluation of expression predictions: per-gene Pearson r, PCC(ACG/HEG/HVG), MSE, MAE,
their JSON/CSV reports and PNG figures. Imports the core, never the reverse."""

from __future__ import annotations

from .metrics import (
    DEFAULT_N_TOP,
    SCALAR_METRICS,
    SectionMetrics,
    average_metrics,
    check_gene_lists,
    evaluate_section,
    pearson_per_gene,
    top_genes,
)

__all__ = [
    "DEFAULT_N_TOP",
    "SCALAR_METRICS",
    "SectionMetrics",
    "average_metrics",
    "check_gene_lists",
    "evaluate_section",
    "pearson_per_gene",
    "top_genes",
]
