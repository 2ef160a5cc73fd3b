"""Shared, read-only assets for the bad-input suite, built once from synthetic data.

Nothing here reads ../shared/data: the suite runs on every clone. Cases copy what they corrupt
into their own work folder; the assets themselves are checked unchanged after every case.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
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
def assets(tmp_path_factory) -> Assets:
    import torch

    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.hub.checkpoint import write_checkpoint
    from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.synthetic import generate_synthetic_dataset
    from mclstexp_hub.training.bank import build_bank_from_dataset

    root = tmp_path_factory.mktemp("reliability_assets")
    data = generate_synthetic_dataset(root / "synthetic", sections=SECTIONS, n_rows=6, n_cols=6,
                                      seed=3)
    patch = data.spot_diameter
    dataset = build_dataset("her2st", data.data_dir, root / "dataset", sections=list(SECTIONS),
                            genes_file=data.genes_file, patch_size=patch,
                            dataset_name="synthetic", progress=False)
    meta = load_dataset_metadata(dataset)
    torch.manual_seed(0)
    config = MclSTExpConfig(gene_names=meta["gene_names"], image_encoder="resnet10t",
                            patch_size=patch, max_position=64, retrieval_k=8,
                            expression_transform=meta["transform"],
                            expression_units=meta["units"])
    model = MclSTExpModel(config).eval()
    build_bank_from_dataset(model, load_st_dataset(dataset), progress=False,
                            dataset_metadata=meta)
    checkpoint = write_checkpoint(model, root / "ckpt")
    spotfile = data.data_dir / "ST-spotfiles" / "B1_selection.tsv"
    spots = pd.read_csv(spotfile, sep="\t")
    spots = spots[spots.get("selected", 1) == 1] if "selected" in spots else spots
    table = pd.DataFrame({
        "spot_id": [f"{int(x)}x{int(y)}" for x, y in spots[["x", "y"]].to_numpy()],
        "pixel_x": spots["pixel_x"].to_numpy(np.float64),
        "pixel_y": spots["pixel_y"].to_numpy(np.float64),
    })
    spots_csv = root / "B1_spots.csv"
    table.to_csv(spots_csv, index=False)
    image = next((data.data_dir / "ST-imgs" / "B" / "B1").glob("*.jpg"))
    return Assets(root=root, data_dir=data.data_dir, genes_file=data.genes_file,
                  genes=list(meta["gene_names"]), dataset=dataset, checkpoint=checkpoint,
                  image=image, spots_csv=spots_csv,
                  counts=data.data_dir / "ST-cnts" / "B1.tsv.gz", patch_size=patch)
