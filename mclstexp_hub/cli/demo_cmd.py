"""`mclstexp demo`: train, save, reload and predict end to end on embedded synthetic data."""

from __future__ import annotations

import argparse

from ._options import add_command, add_run_options


def _demo(args: argparse.Namespace) -> int:
    from mclstexp_hub.demo import run_demo

    # --feature-views / --epochs default to run_demo's own defaults (DEMO_FEATURE_VIEWS,
    # DEMO_EPOCHS): mclstexp_hub.demo loads numpy and pandas, too slow for building the parser
    given = {k: v for k, v in (("feature_views", args.feature_views), ("epochs", args.epochs))
             if v is not None}
    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet, **given)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "demo",
        "end-to-end demo on SYNTHETIC slides (no network, a few minutes on a CPU)", """
        Generates synthetic H&E-like slides whose expression follows the image, builds a
        patch dataset, trains a small model (cpu profile), saves and reloads the
        checkpoint, predicts a held-out slide with `mclstexp predict`, finds spatial
        domains and reports PCC next to a shuffled-image control. Prints the commands
        for real HER2+ data.""")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--feature-views", type=int, default=None,
                   help="augmented views cached per training patch (default: the demo's, "
                        "mclstexp_hub.demo.DEMO_FEATURE_VIEWS)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs over the cached features (default: the demo's, "
                        "mclstexp_hub.demo.DEMO_EPOCHS)")
    add_run_options(p, seed=True)
    p.set_defaults(func=_demo)
