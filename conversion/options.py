"""Options of the authors'-checkpoint converter, torch-free (shared by the script and
`mclstexp convert`, whose `--help` must stay fast)."""

from __future__ import annotations

import argparse

from mclstexp_hub.cli._options import ListOption

AUTHORS_BANK_BATCH_SIZE = 32  # their evaluation DataLoader: batch_size=32, shuffle=False
DEFAULT_HEADS, DEFAULT_HEAD_DIM = 8, 64  # their train.py defaults; not recoverable from shapes
DESCRIPTION = ("Convert an mclSTExp checkpoint of the authors' code (best_{fold}.pt) into an "
               "mclstexp-hub checkpoint directory.")


def build_parser(
    prog: str = "convert_mclstexp_original.py", parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """The converter's options, on a new parser or added to `parser` (`mclstexp convert`)."""
    if parser is None:
        parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--checkpoint", required=True, help="the authors' best_{fold}.pt")
    parser.add_argument("--genes", required=True, help="gene panel in training order (.npy or text)")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--reference-expression", nargs="+", action=ListOption, default=[], metavar="FILE",
                        help="preprocessed expression per reference section (authors' "
                        "preprocessed_matrix.npy, genes x spots; or spots x genes; or .csv/.tsv)")
    parser.add_argument("--reference-positions", nargs="+", action=ListOption, default=[], metavar="FILE",
                        help="array (x, y) positions per reference section, same spot order "
                        "(.npy (n, 2) or .csv/.tsv with x, y columns)")
    parser.add_argument("--section-names", nargs="+", action=ListOption, default=None,
                        help="names of the reference sections (default: file or folder names)")
    parser.add_argument("--exclude-sections", nargs="+", action=ListOption, default=[],
                        help="sections embedded (batching as the authors') but left out of the "
                        "bank, e.g. the held-out section of this fold")
    parser.add_argument("--expression-layout", default="auto",
                        choices=["auto", "genes-by-spots", "spots-by-genes"])
    parser.add_argument("--slice-positions", action="store_true",
                        help="keep only position-table rows 0..max used coordinate")
    parser.add_argument("--max-position", type=int, default=None,
                        help="keep this many position-table rows (instead of deriving it)")
    parser.add_argument("--inference-only", action="store_true",
                        help="drop the spot tower: image tower + projection + spot bank")
    parser.add_argument("--heads", type=int, default=DEFAULT_HEADS)
    parser.add_argument("--head-dim", type=int, default=DEFAULT_HEAD_DIM)
    parser.add_argument("--retrieval-k", type=int, default=200,
                        help="neighbours per prediction (paper: 200 HER2+/cSCC, 2400 Alex+10x)")
    parser.add_argument("--bank-batch-size", type=int, default=AUTHORS_BANK_BATCH_SIZE)
    parser.add_argument("--overwrite", action="store_true")
    return parser
