"""Helpers shared by the prediction tests: tiny checkpoints built from real HER2+ spots.

No test functions here. A checkpoint is a randomly initialised small model (timm resnet10t) whose
spot bank holds the real expression of a HER2+ section, saved exactly as a trained one is
(weights, bank, image processor, pipeline code): enough to test loading, batching, output
formats and errors without training.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mclstexp_hub  # noqa: F401  (registers the Auto classes)
from mclstexp_hub import MclSTExpConfig, MclSTExpModel
from mclstexp_hub.models.mclstexp.image_processing_mclstexp import MclSTExpImageProcessor
from mclstexp_hub.models.mclstexp.pipeline_mclstexp import save_pipeline_code

B4_IMAGE = ("ST-imgs", "B", "B4", "BT10737_D2_HE.jpg")
UNITS = "log10(1 + 1e4 * count / panel total)"


def section_expression(her2st_dir: Path, section: str, genes: list[str]):
    """Preprocessed (log10 CP10k-panel) AnnData of one real HER2+ section on `genes`."""
    from mclstexp_hub.data.preprocess import preprocess_sections
    from mclstexp_hub.data.readers.her2st import read_her2st

    return preprocess_sections(read_her2st(her2st_dir, [section]), genes)[0]


def build_checkpoint(
    out: Path,
    reference,
    *,
    patch_size: int = 224,
    k: int = 10,
    with_bank: bool = True,
    save_code: bool = True,
    pixel_scaling: str = "unit",
    seed: int = 0,
) -> MclSTExpModel:
    """Save a tiny random-init model whose bank is `reference`'s real expression."""
    torch.manual_seed(seed)
    config = MclSTExpConfig(
        gene_names=list(reference.var_names), image_encoder="resnet10t", max_position=128,
        patch_size=patch_size, retrieval_k=k, pixel_scaling=pixel_scaling,
        expression_transform="log10_cp10k_panel", expression_units=UNITS,
    )
    model = MclSTExpModel(config).eval()
    if with_bank:
        section = str(reference.obs["section"].iloc[0])
        model.build_spot_bank(
            torch.as_tensor(np.asarray(reference.X)),
            torch.as_tensor(reference.obs[["array_x", "array_y"]].to_numpy()),
            section_ids=[section] * reference.n_obs,
            patient_ids=[section[0]] * reference.n_obs,
            metadata={"source": f"test bank from HER2+ {section}"},
        )
    model.save_pretrained(out)
    MclSTExpImageProcessor.from_model_config(config).save_pretrained(out)
    if save_code:
        save_pipeline_code(out)
    return model


def her2st_spots(her2st_dir: Path, section: str, every: int = 1) -> pd.DataFrame:
    """spot_id / pixel_x / pixel_y of a section's selected spots (every `every`-th one)."""
    table = pd.read_csv(Path(her2st_dir) / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    table = table[table["selected"] > 0].iloc[::every]
    return pd.DataFrame({
        "spot_id": table["x"].round().astype(int).astype(str) + "x"
        + table["y"].round().astype(int).astype(str),
        "pixel_x": table["pixel_x"].to_numpy(dtype=float),
        "pixel_y": table["pixel_y"].to_numpy(dtype=float),
    }).reset_index(drop=True)


# A sys.meta_path finder that makes `import mclstexp_hub` fail, as on a machine without the
# package: the checkpoint must then load from its own copied code (trust_remote_code=True).
BLOCK_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockMclstexp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mclstexp_hub" or name.startswith("mclstexp_hub."):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, _BlockMclstexp())
    """
)
