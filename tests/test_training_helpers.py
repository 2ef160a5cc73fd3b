"""Shared helpers of the training tests (no tests here).

`tiny_her2st_dataset()` builds, once per test process, a real patch dataset from the first spots
of HER2+ section C2 (real H&E patches and real expression over the published 785-gene panel) in
a temporary folder, for the real-data training tests (test_training.py, test_training_ddp.py).
Tests that need it skip with a reason when the shared data is absent. Tests of behaviour that
holds on any data (the spot-bank tests) use the synthetic session assets of tests/conftest.py
(`synthetic`) instead, and run on every clone.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import GENE_LISTS_DIR, HER2ST_DIR

SMALL_ENCODER = "resnet10t"  # ~5M parameters: fast enough for CPU tests, same code path


def require_her2st() -> None:
    for path in (HER2ST_DIR, GENE_LISTS_DIR / "her2st_785.txt"):
        if not path.exists():
            pytest.skip(
                f"{path} not found: real-data training tests need the shared HER2+ data "
                "(set MCLSTEXP_SHARED_DATA to its folder)."
            )


@cache
def _built_dataset(section: str) -> Path:
    from mclstexp_hub.data.build import build_dataset

    root = Path(tempfile.mkdtemp(prefix="mclstexp-test-data-"))
    atexit.register(shutil.rmtree, root, True)
    return build_dataset(
        "her2st",
        HER2ST_DIR,
        root / f"her2st_{section}",
        sections=[section],
        genes_file=GENE_LISTS_DIR / "her2st_785.txt",
        progress=False,
    )


def tiny_her2st_dataset(n_spots: int | None = 48, section: str = "C2"):
    """(datasets.Dataset of the first n_spots of a real section, dataset folder, metadata)."""
    require_her2st()
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset

    folder = _built_dataset(section)
    dataset = load_st_dataset(folder)
    if n_spots is not None:
        dataset = dataset.select(range(n_spots))
    return dataset, folder, load_dataset_metadata(folder)


def state_hash(module: torch.nn.Module, parameters_only: bool = False) -> str:
    """sha256 over names and bytes of a module's parameters (and buffers unless excluded)."""
    items = module.named_parameters() if parameters_only else module.state_dict().items()
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
