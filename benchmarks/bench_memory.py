"""Peak memory of a 20,000-spot tiled prediction on a synthetic pyramidal whole slide.

Writes a synthetic H&E-like pyramidal TIFF large enough for ~20,000 grid spots (≈ 27,000 px
square at the default pitch: ≈ 2 GiB as raw RGB), a DenseNet-121 inference checkpoint (random
init, 785 genes, a bank of 834 random spots — memory, not quality, is measured), then runs
`mclstexp predict --tile` in a child process and reports its peak RSS (`ru_maxrss`), the
number of spots and the wall time. The issue's bound: peak RSS ≤ 3 GiB.

    .venv/bin/python benchmarks/bench_memory.py                  # ~20,000 spots
    .venv/bin/python benchmarks/bench_memory.py --spots 2000     # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_checkpoint(folder: Path, n_genes: int, n_bank: int, encoder: str) -> Path:
    import torch

    from mclstexp_hub.hub.checkpoint import write_checkpoint
    from mclstexp_hub.models.mclstexp import MclSTExpConfig, MclSTExpModel, SpotBank

    torch.manual_seed(0)
    genes = [f"G{i}" for i in range(n_genes)]
    model = MclSTExpModel(MclSTExpConfig(gene_names=genes, image_encoder=encoder,
                                         has_spot_encoder=False, retrieval_k=200)).eval()
    bank = SpotBank(torch.randn(n_bank, model.config.projection_dim),
                    torch.rand(n_bank, n_genes), genes)
    model.attach_spot_bank(bank)
    return write_checkpoint(model, folder)


def make_slide(path: Path, side: int) -> Path:
    from PIL import Image

    from mclstexp_hub.synthetic import render_synthetic_slide, tiled_canvas, write_pyramidal_tiff

    tile = render_synthetic_slide(7, 12, 12, 160).image
    tile = np.asarray(Image.fromarray(tile).convert("RGB"))
    return write_pyramidal_tiff(path, tiled_canvas(tile, side, side))


def prepare(folder: Path, spots: int, pitch: int, encoder: str) -> None:
    """Write the slide and the checkpoint (run in its own child: the 2 GiB canvas must not
    inflate the process that later spawns the measured prediction)."""
    side = int(math.ceil(math.sqrt(spots / 0.56) * pitch))  # 56 % of grid points pass (measured)
    make_slide(folder / "slide.tif", side)
    make_checkpoint(folder / "ckpt", 785, 834, encoder)
    (folder / "side.txt").write_text(str(side))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spots", type=int, default=20000, help="target number of grid spots")
    ap.add_argument("--pitch", type=int, default=160, help="tile grid pitch in pixels")
    ap.add_argument("--encoder", default="densenet121")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default=None, help="write the result row here")
    ap.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(Path(args.prepare), args.spots, args.pitch, args.encoder)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import run_measured

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--prepare", str(tmp), "--spots",
                        str(args.spots), "--pitch", str(args.pitch), "--encoder", args.encoder],
                       check=True)
        setup_s = time.perf_counter() - t0
        side = int((tmp / "side.txt").read_text())
        slide, ckpt, out = tmp / "slide.tif", tmp / "ckpt", tmp / "pred.h5ad"
        cmd = [sys.executable, "-m", "mclstexp_hub.cli", "predict", "--model", str(ckpt),
               "--image", str(slide), "--tile", "--tile-pitch", str(args.pitch),
               "--min-tissue-fraction", "0.01", "--out", str(out), "--quiet", "--device", "cpu",
               "--precision", args.precision]
        parent_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run = run_measured(cmd)  # the prediction child's own peak RSS (wait4)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return run.returncode
        import anndata as ad

        adata = ad.read_h5ad(out, backed="r")
        row = {"spots": int(adata.n_obs), "slide_px": side, "raw_rgb_gib": side * side * 3 / 2**30,
               "slide_file_mib": slide.stat().st_size / 2**20, "encoder": args.encoder,
               "precision": str(adata.uns["mclstexp"].get("precision")),
               "peak_rss_gib": run.peak_rss_gib, "wall_s": run.wall_s,
               "spots_per_s": adata.n_obs / run.wall_s, "setup_s": setup_s,
               "parent_peak_rss_mib_at_spawn": parent_rss_mib,
               "load_avg_before_after": [run.load_before, run.load_after]}
    print(json.dumps(row, indent=2))
    print(f"{row['spots']} spots on a {side}x{side} px pyramidal slide "
          f"({row['raw_rgb_gib']:.2f} GiB raw RGB): peak RSS {row['peak_rss_gib']:.2f} GiB "
          f"(bound 3 GiB), {row['wall_s']:.0f} s, {row['spots_per_s']:.1f} spots/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
