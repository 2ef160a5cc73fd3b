"""Shared, read-only assets for the bad-input suite: the synthetic session assets.

They are built once by `synthetic` in tests/conftest.py (sections A1 + B1, a patch dataset, a
small checkpoint whose bank holds both); nothing here reads ../shared/data, so the suite runs on
every clone. Cases copy what they corrupt into their own work folder; the assets themselves are
checked unchanged after every case.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SECTIONS = ("A1", "B1")


@dataclass
class Assets:
    root: Path
    data_dir: Path  # HER2+-layout raw data (ST-cnts, ST-spotfiles, ST-imgs)
    genes_file: Path
    genes: list[str]
    dataset: Path  # built patch dataset (both sections)
    checkpoint: Path  # small complete checkpoint with a spot bank of A1 + B1
    image: Path  # B1's full-resolution image
    spots_csv: Path  # B1's spots: spot_id, pixel_x, pixel_y
    counts: Path  # B1's raw counts (ST-cnts .tsv.gz)
    patch_size: int

    def copy(self, name: str, work: Path) -> Path:
        """A private copy of one asset (file or folder) under `work`, to corrupt."""
        source = getattr(self, name)
        target = work / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target


@pytest.fixture(scope="session")
def assets(synthetic) -> Assets:
    """The session's synthetic assets (tests/conftest.py), seen through this suite's interface."""
    assert tuple(synthetic.sections) == SECTIONS and synthetic.slide == "B1"
    return Assets(root=synthetic.root, data_dir=synthetic.data_dir,
                  genes_file=synthetic.genes_file, genes=list(synthetic.genes),
                  dataset=synthetic.dataset, checkpoint=synthetic.checkpoint,
                  image=synthetic.image, spots_csv=synthetic.spots_csv,
                  counts=synthetic.counts, patch_size=synthetic.patch_size)
