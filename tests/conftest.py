"""Shared pytest fixtures: real-data locations and small model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MCLSTEXP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
HER2ST_DIR = SHARED_DATA / "her2st"
GENE_LISTS_DIR = SHARED_DATA / "gene_lists"

# Tests must never reach the network: the Hub is only ever a local test server.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Subprocess tests (2-rank gloo, remote-code loads) share 2 cores: spinning OpenMP waits
# under oversubscription cost whole scheduler slices (measured ≈ 40x slower steps).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"{path} not found: real-data tests need the shared reference data "
            "(set MCLSTEXP_SHARED_DATA to its folder)."
        )
    return path


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    return _require(HER2ST_DIR)


@pytest.fixture(scope="session")
def gene_lists_dir() -> Path:
    return _require(GENE_LISTS_DIR)


@pytest.fixture(scope="session")
def her2st_panel(gene_lists_dir: Path) -> list[str]:
    return [g.strip() for g in (gene_lists_dir / "her2st_785.txt").read_text().splitlines() if g.strip()]
