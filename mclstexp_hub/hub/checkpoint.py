"""The one checkpoint writer: a complete mclSTExp checkpoint folder, or nothing.

`MclSTExpModel.save_pretrained` knows *what* a checkpoint holds (weights, config, spot bank,
image processor, pipeline code). This module adds *how* it lands on disk for the trainer, the
converter, the demo and `push_model`: staged in a hidden sibling folder and renamed into place,
so a reader (`from_pretrained`, `mclstexp push`, a second process) never sees a half-written
folder, and a failure leaves no partial output behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

TRAINING_INFO_FILE = "training_info.json"


def write_checkpoint(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    training_info: dict[str, Any] | None = None,
    image_processor: Any = None,
    overwrite: bool = False,
    keep: Sequence[str] = (),
    inputs: Iterable[str | os.PathLike | None] = (),
    is_ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Write `model`'s complete checkpoint to `out_dir` atomically; returns the folder.

    training_info: written as `training_info.json` next to the weights when given.
    image_processor: saved instead of the processor derived from the model config.
    overwrite: replace an existing non-empty `out_dir` (otherwise FileExistsError) — only when
        it is recognisably ours (`is_ours`, default `outputs.is_checkpoint_folder`): a foreign
        folder is never replaced (`outputs.check_output`).
    inputs: paths the run read; `out_dir` may neither equal nor contain one.
    keep: entries of the replaced folder to move into the new one (e.g. the Trainer's
        `checkpoints/` resume states); everything else of the old folder is removed.
    """
    from ..models.mclstexp import register
    from ..outputs import check_output, is_checkpoint_folder, replace_folder, staging

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a checkpoint folder; choose another path.")
    check_output(out, overwrite=overwrite, inputs=inputs,
                 is_ours=is_ours or is_checkpoint_folder, what="checkpoint folder")
    register()  # config.json then carries auto_map and the remote code is copied
    with staging(out.parent, f".{out.name}.staging-") as stage:
        model.save_pretrained(stage, image_processor=image_processor)
        if training_info is not None:
            (stage / TRAINING_INFO_FILE).write_text(
                json.dumps(training_info, indent=2, default=str) + "\n", encoding="utf-8"
            )
        replace_folder(stage, out, keep=keep)
    return out


__all__ = ["TRAINING_INFO_FILE", "write_checkpoint"]
