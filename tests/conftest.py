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


# --- synthetic fixtures (built by the project; available on every clone) --------------------

RETRIEVAL_GENES = [f"G{i}" for i in range(7)]


@pytest.fixture(scope="session")
def random_bank():
    """A 300-spot × 7-gene SpotBank of random 16-d embeddings and 25 random queries."""
    import torch

    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    g = torch.Generator().manual_seed(0)
    bank = SpotBank(
        embeddings=torch.randn(300, 16, generator=g),
        expression=torch.rand(300, len(RETRIEVAL_GENES), generator=g) * 2,
        gene_names=RETRIEVAL_GENES,
    )
    queries = torch.randn(25, 16, generator=g)
    return bank, queries


# --- real HER2+ fixtures (tests using them are marked realdata and skip without the data) ----


@pytest.fixture(scope="session")
def c2(her2st_dir: Path, her2st_panel: list[str]):
    """Preprocessed real HER2+ section C2 on the 785-gene panel (a checkpoint's bank)."""
    from test_pipeline_helpers import section_expression

    return section_expression(her2st_dir, "C2", her2st_panel)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, c2) -> Path:
    """A tiny random-init checkpoint (k=10) whose spot bank is C2's real expression."""
    from test_pipeline_helpers import build_checkpoint

    out = tmp_path_factory.mktemp("ckpt")
    build_checkpoint(out, c2, k=10)
    return out


@pytest.fixture(scope="session")
def b4_image(her2st_dir: Path) -> Path:
    """The full-resolution H&E image of real HER2+ section B4."""
    from test_pipeline_helpers import B4_IMAGE

    return Path(her2st_dir).joinpath(*B4_IMAGE)
