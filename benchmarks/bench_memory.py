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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spots", type=int, default=20000, help="target number of grid spots")
    ap.add_argument("--pitch", type=int, default=160, help="tile grid pitch in pixels")
    ap.add_argument("--encoder", default="densenet121")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default=None, help="write the result row here")
    args = ap.parse_args(argv)
    # ≈ 70 % of grid points of the repeated synthetic tissue pass the tissue test (measured)
    side = int(math.ceil(math.sqrt(args.spots / 0.7) * args.pitch))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        slide = make_slide(tmp / "slide.tif", side)
        ckpt = make_checkpoint(tmp / "ckpt", 785, 834, args.encoder)
        setup_s = time.perf_counter() - t0
        out = tmp / "pred.h5ad"
        cmd = [sys.executable, "-m", "mclstexp_hub.cli", "predict", "--model", str(ckpt),
               "--image", str(slide), "--tile", "--tile-pitch", str(args.pitch),
               "--min-tissue-fraction", "0.01", "--out", str(out), "--quiet", "--device", "cpu",
               "--precision", args.precision]
        t1 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t1
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        import anndata as ad

        adata = ad.read_h5ad(out, backed="r")
        row = {"spots": int(adata.n_obs), "slide_px": side, "raw_rgb_gib": side * side * 3 / 2**30,
               "slide_file_mib": slide.stat().st_size / 2**20, "encoder": args.encoder,
               "precision": str(adata.uns["mclstexp"].get("precision")),
               "peak_rss_gib": peak_mib / 1024, "wall_s": wall, "spots_per_s": adata.n_obs / wall,
               "setup_s": setup_s, "load_avg": os.getloadavg()}
    print(json.dumps(row, indent=2))
    print(f"{row['spots']} spots on a {side}x{side} px pyramidal slide "
          f"({row['raw_rgb_gib']:.2f} GiB raw RGB): peak RSS {row['peak_rss_gib']:.2f} GiB "
          f"(bound 3 GiB), {wall:.0f} s, {row['spots_per_s']:.1f} spots/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
