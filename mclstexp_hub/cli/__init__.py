"""`mclstexp` command line: one sub-command module per job, each exposing `register(subparsers)`.

Sub-command modules are imported lazily so that `mclstexp --help` stays fast and a missing
optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import os

# Before torch loads: on a shared CPU, OpenMP threads that spin while waiting make steps up to
# ~40x slower (measured); passive waiting costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import sys

# name of the sub-command -> module under mclstexp_hub.cli that registers it
_COMMAND_MODULES: dict[str, str] = {
    "data": "data_cmd",
    "train": "train_cmd",
    "bank": "bank_cmd",
    "evaluate": "evaluate_cmd",
    "benchmark": "benchmark_cmd",
    "predict": "predict_cmd",
    "domains": "domains_cmd",
    "push": "push_cmd",
    "card": "card_cmd",
    "demo": "demo_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    """The `mclstexp` parser with every shipped sub-command (cheap: no torch/transformers)."""
    parser = argparse.ArgumentParser(
        prog="mclstexp",
        description="mclSTExp: predict spatial gene expression from H&E histology.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in dict.fromkeys(_COMMAND_MODULES.values()):
        try:
            module = importlib.import_module(f"mclstexp_hub.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mclstexp_hub.cli.{module_name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; user errors print one line (exit 2), or a traceback with --debug."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        if args.debug:
            raise
        # user-facing errors carry the file/field and the fix in their message
        print(f"mclstexp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
