"""Analyses of predicted expression (spatial domains)."""

from __future__ import annotations

from .domains import DomainResult, domain_scores, read_labels, run_domains, spatial_domains

__all__ = ["DomainResult", "domain_scores", "read_labels", "run_domains", "spatial_domains"]
