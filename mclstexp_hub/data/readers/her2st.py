"""HER2-positive breast tumour ST sections (Andersson et al., Nat Commun 2021).

Layout of the public repository github.com/almaan/her2st, folder ``data/``::

    ST-cnts/{S}.tsv.gz                      counts, spots × genes, index "{x}x{y}"
    ST-spotfiles/{S}_selection.tsv          x y new_x new_y pixel_x pixel_y selected
    ST-imgs/{P}/{S}/*.jpg                   full-resolution H&E (P = patient letter)
    ST-pat/lbl/{S}_labeled_coordinates.tsv  pathologist labels (first section per patient)

Sections without an image load with expression only: ``metadata["has_image"]`` is False and
``image_path`` is None (and a note is logged). ``Her2stReader`` holds the logic; the
``*_her2st*`` functions are the entry points kept for existing callers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...presets import get_preset
from ..errors import DataError, preview
from .base import SectionReader, register_reader

if TYPE_CHECKING:  # heavy at import time: loaded on first read (keeps `mclstexp --help` fast)
    import anndata as ad

logger = logging.getLogger(__name__)

SOURCE = "HER2+ breast cancer ST (Andersson et al., Nat Commun 2021; github.com/almaan/her2st)"
LICENSE_NOTE = get_preset("her2st").license_note
_SECTION_RE = re.compile(r"^([A-Z])(\d+)$")


def _check_root(data_dir: Path) -> None:
    if not (data_dir / "ST-cnts").is_dir():
        raise FileNotFoundError(
            f"{data_dir}/ST-cnts not found: --data-dir must be the her2st 'data/' folder "
            "(with ST-cnts/, ST-spotfiles/, ST-imgs/, ST-pat/)"
        )


def find_her2st_image(data_dir: str | Path, section: str) -> Path | None:
    """The full-resolution image of a section, or None when the folder holds none."""
    folder = Path(data_dir) / "ST-imgs" / section[0] / section
    images = sorted(
        p
        for p in folder.glob("*")
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
    )
    if len(images) > 1:
        raise DataError(
            f"{folder}: {len(images)} images ({preview(p.name for p in images)}); keep exactly "
            "one full-resolution H&E image per section folder"
        )
    return images[0] if images else None


@register_reader
class Her2stReader(SectionReader):
    """HER2+ ST sections of github.com/almaan/her2st (patient = the section's letter)."""

    name = "her2st"
    license_note = LICENSE_NOTE
    layout = "the her2st 'data/' folder (ST-cnts/, ST-spotfiles/, ST-imgs/, ST-pat/)"

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """Section names (``A1`` …) that have a counts table, sorted; optionally only imaged."""
        data_dir = Path(data_dir)
        _check_root(data_dir)
        names = sorted(
            p.name.split(".")[0]
            for p in (data_dir / "ST-cnts").glob("*.tsv*")
            if _SECTION_RE.match(p.name.split(".")[0])
        )
        if with_images_only:
            names = [s for s in names if find_her2st_image(data_dir, s) is not None]
        return names

    def read_section(self, data_dir: str | Path, section: str) -> ad.AnnData:
        """One HER2+ section; missing tables raise FileNotFoundError naming the file."""
        from ._st import read_st_section

        data_dir = Path(data_dir)
        _check_root(data_dir)
        if not _SECTION_RE.match(section):
            raise DataError(
                f"section {section!r}: HER2+ sections are named like 'B4' (letter+digit)"
            )
        counts = data_dir / "ST-cnts" / f"{section}.tsv.gz"
        if not counts.is_file() and (data_dir / "ST-cnts" / f"{section}.tsv").is_file():
            counts = data_dir / "ST-cnts" / f"{section}.tsv"
        if not counts.is_file():
            raise FileNotFoundError(
                f"counts table not found: {counts}; available sections: "
                f"{preview(self.list_sections(data_dir))}"
            )
        spots = data_dir / "ST-spotfiles" / f"{section}_selection.tsv"
        if not spots.is_file():
            raise FileNotFoundError(
                f"spot table not found: {spots}; every section needs its ST-spotfiles selection"
            )
        labels = data_dir / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
        image = find_her2st_image(data_dir, section)
        if image is None:
            logger.info("HER2+ section %s has no image under ST-imgs/: expression only", section)
        return read_st_section(
            counts,
            spots,
            section=section,
            patient=section[0],
            source=SOURCE,
            image_path=image,
            labels_path=labels if labels.is_file() else None,
        )


def list_her2st_sections(data_dir: str | Path, with_images_only: bool = False) -> list[str]:
    """Section names (``A1`` …) that have a counts table, sorted; optionally only imaged ones."""
    return Her2stReader().list_sections(data_dir, with_images_only=with_images_only)


def read_her2st_section(data_dir: str | Path, section: str) -> ad.AnnData:
    """One HER2+ section as AnnData (patient = the section's letter)."""
    return Her2stReader().read_section(data_dir, section)


def read_her2st(data_dir: str | Path, sections: Sequence[str] | None = None) -> list[ad.AnnData]:
    """HER2+ sections (all that have counts when ``sections`` is None), one AnnData each."""
    return Her2stReader().read(data_dir, sections)
