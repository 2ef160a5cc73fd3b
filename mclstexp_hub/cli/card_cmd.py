"""`mclstexp card [RESULTS_DIR]`: a model card from measured benchmark results."""

from __future__ import annotations

import argparse
import sys

from mclstexp_hub.presets import preset_names

from ._options import add_command, add_out_option, option_values


def _card(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mclstexp_hub.hub.cards import render_card, write_card
    from mclstexp_hub.outputs import check_not_an_input

    if args.out != "-":
        results = Path(args.results_dir) if args.results_dir else None
        summary = results / "summary.json" if results is not None and results.is_dir() else results
        check_not_an_input(args.out, [summary, args.checkpoint, args.template])
        if Path(args.out).is_dir():
            raise IsADirectoryError(f"--out {args.out} is a folder; give the card's file name "
                                    "(e.g. README.md).")

    text = render_card(
        args.dataset,
        args.results_dir,
        **option_values(args, ("repo_id", "license", "dataset_id", "template", "checkpoint",
                               "no_results_reason")),
    )
    if args.out == "-":
        sys.stdout.write(text)
    else:
        print(f"wrote {write_card(text, args.out)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    card = add_command(
        subparsers, "card",
        "write a model card (YAML metadata + text) from a benchmark results directory", """
        RESULTS_DIR is the --out of `mclstexp benchmark` (its summary.json). Only its
        measured mclSTExp figures go into the model-index; the paper's figures appear in
        the text, labelled. Without RESULTS_DIR the card says plainly that nothing was
        measured.""")
    card.add_argument("results_dir", nargs="?", default=None, help="benchmark output folder")
    card.add_argument("--dataset", choices=sorted(preset_names()), default=None,
                      help="paper dataset (taken from RESULTS_DIR when given)")
    add_out_option(card, "card file to write, or - for stdout")
    card.add_argument("--repo-id", default=None,
                      help="repository the card's code examples load (default "
                      "mclstexp-hub/mclstexp-DATASET)")
    card.add_argument("--license", default="mit")
    card.add_argument("--dataset-id", default=None,
                      help="Hub dataset id for the `datasets` metadata (default: the dataset name)")
    card.add_argument("--checkpoint", default=None,
                      help="checkpoint directory to describe (genes, units, k, spot bank)")
    card.add_argument("--template", default=None, help="Jinja template (default model_cards/template.md)")
    card.add_argument("--no-results-reason", default=None,
                      help="sentence saying why a card has no measured results")
    card.set_defaults(func=_card)
