"""Atomic output files: a prediction is either completely written or not there at all."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..outputs import check_output, is_prediction_h5ad, publish_file, staging


def check_output_path(
    path: str | Path, overwrite: bool, suffix: str = ".h5ad", inputs: Iterable[Any] = ()
) -> Path:
    """Validate an output file path before any slow work.

    `--overwrite` replaces only a prediction file this tool wrote (see `mclstexp_hub.outputs`);
    the output may never be one of the `inputs`.
    """
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise ValueError(f"output {path} must end in {suffix}.")
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name ending in {suffix}.")
    return check_output(path, overwrite=overwrite, inputs=inputs, is_ours=is_prediction_h5ad,
                        what="prediction file")


def write_h5ad_atomic(adata, path: str | Path, overwrite: bool = False,
                      inputs: Iterable[Any] = ()) -> Path:
    """Write `adata` to a temporary file next to `path`, then rename it into place."""
    path = check_output_path(path, overwrite, inputs=inputs)
    with staging(path.parent, f".{path.name}.", file=True, suffix=".partial.h5ad") as tmp:
        adata.write_h5ad(tmp)
        return publish_file(tmp, path)


def save_figure_atomic(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG via a temporary file."""
    path = Path(path)
    with staging(path.parent, f".{path.name}.", file=True, suffix=".partial.png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        return publish_file(tmp, path)


__all__ = ["check_output_path", "save_figure_atomic", "write_h5ad_atomic"]
