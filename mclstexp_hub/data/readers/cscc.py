"""Cutaneous squamous cell carcinoma ST sections (Ji et al., Cell 2020), GEO GSE144240.

The GEO supplementary files, flat in one folder (``.tsv`` or ``.tsv.gz``)::

    GSM…_{P}_ST_{rep}_stdata.tsv            counts, spots × genes, index "{x}x{y}"
    GSM…_spot_data-selection-{P}_ST_{rep}.tsv   x y new_x new_y pixel_x pixel_y selected
    GSM…_{P}_ST_{rep}.jpg                   full-resolution H&E

Section names are ``{P}_ST_{rep}`` (e.g. ``P2_ST_rep1``), the patient is ``{P}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from ..errors import DataError, preview
from ._st import read_st_section

SOURCE = "cSCC ST (Ji et al., Cell 2020; GEO GSE144240)"
LICENSE_NOTE = (
    "Data of Ji et al., Cell 2020, from NCBI GEO accession GSE144240. NCBI places no "
    "restrictions on GEO data, but submitters may hold rights; cite the original article."
)
_COUNTS_RE = re.compile(r"(?:^|_)((P\d+)_ST_(rep\d+))_stdata\.tsv(?:\.gz)?$")


def _one(data_dir: Path, pattern: str, what: str, section: str) -> Path | None:
    hits = sorted(p for p in data_dir.glob(pattern) if p.is_file())
    if len(hits) > 1:
        raise DataError(
            f"{data_dir}: {len(hits)} {what} files for section {section} "
            f"({preview(p.name for p in hits)}); keep one"
        )
    return hits[0] if hits else None


def list_cscc_sections(data_dir: str | Path) -> list[str]:
    """Section names ``{P}_ST_{rep}`` that have a ``*_stdata.tsv[.gz]`` counts file."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"cSCC data folder not found: {data_dir}")
    names = {m.group(1) for p in data_dir.iterdir() if (m := _COUNTS_RE.search(p.name))}
    return sorted(names, key=lambda s: (int(s.split("_")[0][1:]), s))


def read_cscc_section(
    data_dir: str | Path, section: str, require_image: bool = False
) -> ad.AnnData:
    """One cSCC section; missing counts/spot tables raise FileNotFoundError naming the pattern."""
    data_dir = Path(data_dir)
    if not re.fullmatch(r"P\d+_ST_rep\d+", section):
        raise DataError(f"section {section!r}: cSCC sections are named like 'P2_ST_rep1'")
    counts = _one(data_dir, f"*{section}_stdata.tsv*", "counts", section)
    if counts is None:
        raise FileNotFoundError(
            f"counts table not found: {data_dir}/*_{section}_stdata.tsv[.gz]; available "
            f"sections: {preview(list_cscc_sections(data_dir))}"
        )
    spots = _one(data_dir, f"*spot_data-selection-{section}.tsv*", "spot table", section)
    if spots is None:
        raise FileNotFoundError(
            f"spot table not found: {data_dir}/*spot_data-selection-{section}.tsv[.gz]"
        )
    image = _one(data_dir, f"*_{section}.jpg", "image", section)
    if image is None:
        gz = _one(data_dir, f"*_{section}.jpg.gz", "image", section)
        if gz is not None:
            raise DataError(f"{gz}: the image is still gzip-compressed; run `gunzip {gz}` first")
        if require_image:
            raise FileNotFoundError(f"image not found: {data_dir}/*_{section}.jpg")
    return read_st_section(
        counts,
        spots,
        section=section,
        patient=section.split("_")[0],
        source=SOURCE,
        image_path=image,
    )


def read_cscc(data_dir: str | Path, sections: Sequence[str] | None = None) -> list[ad.AnnData]:
    """cSCC sections (all found when ``sections`` is None), one AnnData each."""
    names = list(sections) if sections else list_cscc_sections(data_dir)
    if not names:
        raise FileNotFoundError(
            f"{data_dir}: no '*_{{P}}_ST_{{rep}}_stdata.tsv[.gz]' counts files (GEO GSE144240 layout)"
        )
    return [read_cscc_section(data_dir, s) for s in names]
