"""Readers: raw files of one layout → one validated AnnData per tissue section.

One ``SectionReader`` subclass per platform (``Her2stReader``, ``CsccReader``,
``VisiumReader``, ``H5adReader``, ``HestReader``), looked up by kind with
``reader_factory(kind, **options)``;
``list_readers()`` names the kinds. The ``read_*`` functions are thin entry points over them.

The modules import anndata/pandas only when a section is read, so listing the readers (the
CLI's ``--help``) stays fast. Every reader returns sections with raw counts in ``X`` (CSR), unique gene symbols as
``var_names``, ``obs`` columns ``spot_id array_x array_y pixel_x pixel_y section patient
label``, ``obsm["spatial"]`` = full-resolution pixel (x, y) and ``uns["spatial"][section]``.
"""

from __future__ import annotations

from typing import Any

from .base import SectionReader, list_readers, reader_class, reader_factory, register_reader

# Registration order = the order `list_readers()` (and the CLI) offers: paper layouts first.
# isort: off
from .her2st import Her2stReader, list_her2st_sections, read_her2st, read_her2st_section
from .cscc import CsccReader, list_cscc_sections, read_cscc, read_cscc_section
from .visium import VisiumReader, read_10x_h5, read_10x_mtx, read_tissue_positions, read_visium
from .h5ad import H5adReader, read_h5ad
from .hest import HestReader, read_hest

# isort: on

_FROM_SECTION = ("OBS_COLUMNS", "section_metadata")


def __getattr__(name: str) -> Any:
    """``OBS_COLUMNS`` / ``section_metadata`` load anndata, so they come on first use."""
    if name in _FROM_SECTION:
        from . import _section

        return getattr(_section, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "OBS_COLUMNS",
    "CsccReader",
    "H5adReader",
    "HestReader",
    "Her2stReader",
    "SectionReader",
    "VisiumReader",
    "list_cscc_sections",
    "list_her2st_sections",
    "list_readers",
    "read_10x_h5",
    "read_10x_mtx",
    "read_cscc",
    "read_cscc_section",
    "read_h5ad",
    "read_hest",
    "read_her2st",
    "read_her2st_section",
    "read_tissue_positions",
    "read_visium",
    "reader_class",
    "reader_factory",
    "register_reader",
    "section_metadata",
]
