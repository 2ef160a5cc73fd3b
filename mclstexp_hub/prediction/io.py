"""Atomic output files: a prediction is either completely written or not there at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..outputs import check_output, is_prediction_h5ad


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


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes 0600) and rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_h5ad_atomic(adata, path: str | Path, overwrite: bool = False,
                      inputs: Iterable[Any] = ()) -> Path:
    """Write `adata` to a temporary file next to `path`, then rename it into place."""
    path = check_output_path(path, overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.h5ad", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_figure_atomic(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG via a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


__all__ = ["check_output_path", "save_figure_atomic", "write_h5ad_atomic"]
