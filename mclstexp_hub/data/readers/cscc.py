"""Cutaneous squamous cell carcinoma ST sections (Ji et al., Cell 2020), GEO GSE144240.

The GEO supplementary files, flat in one folder (``.tsv`` or ``.tsv.gz``)::

    GSM…_{P}_ST_{rep}_stdata.tsv            counts, spots × genes, index "{x}x{y}"
    GSM…_spot_data-selection-{P}_ST_{rep}.tsv   x y new_x new_y pixel_x pixel_y selected
    GSM…_{P}_ST_{rep}.jpg                   full-resolution H&E

Section names are ``{P}_ST_{rep}`` (e.g. ``P2_ST_rep1``), the patient is ``{P}``.
``CsccReader`` holds the logic; the ``*_cscc*`` functions are the entry points kept for
existing callers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...presets import get_preset
from ..errors import DataError, preview
from .base import SectionReader, register_reader

if TYPE_CHECKING:  # heavy at import time: loaded on first read (keeps `mclstexp --help` fast)
    import anndata as ad

SOURCE = "cSCC ST (Ji et al., Cell 2020; GEO GSE144240)"
LICENSE_NOTE = get_preset("cscc").license_note
_COUNTS_RE = re.compile(r"(?:^|_)((P\d+)_ST_(rep\d+))_stdata\.tsv(?:\.gz)?$")


def _one(data_dir: Path, pattern: str, what: str, section: str) -> Path | None:
    hits = sorted(p for p in data_dir.glob(pattern) if p.is_file())
    if len(hits) > 1:
        raise DataError(
            f"{data_dir}: {len(hits)} {what} files for section {section} "
            f"({preview(p.name for p in hits)}); keep one"
        )
    return hits[0] if hits else None


def _find_image(data_dir: Path, section: str) -> Path | None:
    """The section's ``*_{section}.jpg``; a still-gzipped image is an error saying so."""
    image = _one(data_dir, f"*_{section}.jpg", "image", section)
    if image is None:
        gz = _one(data_dir, f"*_{section}.jpg.gz", "image", section)
        if gz is not None:
            raise DataError(f"{gz}: the image is still gzip-compressed; run `gunzip {gz}` first")
    return image


@register_reader
class CsccReader(SectionReader):
    """cSCC ST sections in GEO GSE144240 naming, flat in one folder.

    require_image: a section without its ``.jpg`` is an error instead of expression only.
    """

    name = "cscc"
    license_note = LICENSE_NOTE
    layout = (
        "the folder of GEO GSE144240 supplementary files (*_stdata.tsv[.gz], "
        "*spot_data-selection-*.tsv[.gz], *.jpg)"
    )

    def __init__(self, require_image: bool = False) -> None:
        self.require_image = require_image

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """Section names ``{P}_ST_{rep}`` that have a ``*_stdata.tsv[.gz]`` counts file."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"cSCC data folder not found: {data_dir}")
        names = {m.group(1) for p in data_dir.iterdir() if (m := _COUNTS_RE.search(p.name))}
        ordered = sorted(names, key=lambda s: (int(s.split("_")[0][1:]), s))
        if with_images_only:
            ordered = [s for s in ordered if _find_image(data_dir, s) is not None]
        return ordered

    def read_section(self, data_dir: str | Path, section: str) -> ad.AnnData:
        """One section; missing counts/spot tables raise FileNotFoundError naming the pattern."""
        from ._st import read_st_section

        data_dir = Path(data_dir)
        if not re.fullmatch(r"P\d+_ST_rep\d+", section):
            raise DataError(f"section {section!r}: cSCC sections are named like 'P2_ST_rep1'")
        counts = _one(data_dir, f"*{section}_stdata.tsv*", "counts", section)
        if counts is None:
            raise FileNotFoundError(
                f"counts table not found: {data_dir}/*_{section}_stdata.tsv[.gz]; available "
                f"sections: {preview(self.list_sections(data_dir))}"
            )
        spots = _one(data_dir, f"*spot_data-selection-{section}.tsv*", "spot table", section)
        if spots is None:
            raise FileNotFoundError(
                f"spot table not found: {data_dir}/*spot_data-selection-{section}.tsv[.gz]"
            )
        image = _find_image(data_dir, section)
        if image is None and self.require_image:
            raise FileNotFoundError(f"image not found: {data_dir}/*_{section}.jpg")
        return read_st_section(
            counts,
            spots,
            section=section,
            patient=section.split("_")[0],
            source=SOURCE,
            image_path=image,
        )


def list_cscc_sections(data_dir: str | Path) -> list[str]:
    """Section names ``{P}_ST_{rep}`` that have a ``*_stdata.tsv[.gz]`` counts file."""
    return CsccReader().list_sections(data_dir)


def read_cscc_section(
    data_dir: str | Path, section: str, require_image: bool = False
) -> ad.AnnData:
    """One cSCC section; missing counts/spot tables raise FileNotFoundError naming the pattern."""
    return CsccReader(require_image=require_image).read_section(data_dir, section)


def read_cscc(data_dir: str | Path, sections: Sequence[str] | None = None) -> list[ad.AnnData]:
    """cSCC sections (all found when ``sections`` is None), one AnnData each."""
    return CsccReader().read(data_dir, sections)
