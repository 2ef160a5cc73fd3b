"""Pictures of predictions: gene maps and spatial-domain maps over the H&E thumbnail."""

from __future__ import annotations

from .spatial_maps import (
    gene_pearson,
    plot_cluster_map,
    plot_gene_map,
    save_gene_maps,
    spatial_frame,
)

__all__ = ["gene_pearson", "plot_cluster_map", "plot_gene_map", "save_gene_maps", "spatial_frame"]
