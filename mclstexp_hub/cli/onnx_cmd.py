"""`mclstexp onnx CHECKPOINT`: export the image tower for ONNX Runtime (faster CPU prediction)."""

from __future__ import annotations

import argparse
import os

from ._options import add_command


def _onnx(args: argparse.Namespace) -> int:
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import (
        MclSTExpModel,
        check_checkpoint_folder,
    )
    from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import (
        ONNX_TOWER_FILENAME,
        export_image_tower,
    )

    if not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"{args.checkpoint}: not a folder; pass a local checkpoint folder "
                                "(download a Hub model first).")
    check_checkpoint_folder(args.checkpoint)
    model = MclSTExpModel.from_pretrained(args.checkpoint, load_spot_bank=False).eval()
    info = export_image_tower(model, args.checkpoint)
    print(f"wrote {os.path.join(args.checkpoint, ONNX_TOWER_FILENAME)} (max |onnx - torch| "
          f"{info['max_abs_difference_vs_torch']:.2g} on a check batch; "
          f"{info['export_seconds']:.0f} s); `mclstexp predict` uses it on CPU in fp32")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "onnx", "export a checkpoint's image tower to ONNX for faster "
                    "CPU prediction", """
        Writes CHECKPOINT/image_tower.onnx and image_tower_onnx.json (the fingerprint of the
        weights it came from, its measured agreement with PyTorch). `mclstexp predict
        --backend auto` (the default) then runs the tower with ONNX Runtime on CPU in fp32;
        a stale export (other weights) is ignored. Needs the onnx extra
        (pip install 'mclstexp-hub[onnx]').""")
    p.add_argument("checkpoint", help="local checkpoint folder")
    p.set_defaults(func=_onnx)
