"""`mclstexp demo`: train, save, reload and predict end to end on embedded synthetic data."""

from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    from mclstexp_hub.demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet,
             feature_views=args.feature_views, epochs=args.epochs)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mclstexp_hub.demo import DEMO_EPOCHS, DEMO_FEATURE_VIEWS

    p = subparsers.add_parser(
        "demo",
        help="end-to-end demo on SYNTHETIC slides (no network, a few minutes on a CPU)",
        description=(
            "Generates synthetic H&E-like slides whose expression follows the image, builds a "
            "patch dataset, trains a small model (cpu profile), saves and reloads the checkpoint, "
            "predicts a held-out slide with `mclstexp predict`, finds spatial domains and reports "
            "PCC next to a shuffled-image control. Prints the commands for real HER2+ data."
        ),
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-views", type=int, default=DEMO_FEATURE_VIEWS,
                   help=f"augmented views cached per training patch ({DEMO_FEATURE_VIEWS})")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"training epochs over the cached features ({DEMO_EPOCHS})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
