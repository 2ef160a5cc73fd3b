"""Readers: raw files of one layout → one validated AnnData per tissue section.

Every reader returns sections with raw counts in ``X`` (CSR), unique gene symbols as
``var_names``, ``obs`` columns ``spot_id array_x array_y pixel_x pixel_y section patient
label``, ``obsm["spatial"]`` = full-resolution pixel (x, y) and ``uns["spatial"][section]``.
"""

from __future__ import annotations

from ._section import OBS_COLUMNS, section_metadata
from .cscc import list_cscc_sections, read_cscc, read_cscc_section
from .h5ad import read_h5ad
from .her2st import list_her2st_sections, read_her2st, read_her2st_section
from .visium import read_10x_h5, read_tissue_positions, read_visium

__all__ = [
    "OBS_COLUMNS",
    "list_cscc_sections",
    "list_her2st_sections",
    "read_10x_h5",
    "read_cscc",
    "read_cscc_section",
    "read_h5ad",
    "read_her2st",
    "read_her2st_section",
    "read_tissue_positions",
    "read_visium",
    "section_metadata",
]
