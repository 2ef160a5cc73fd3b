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
    "pretrain": "pretrain_cmd",
    "bank": "bank_cmd",
    "evaluate": "evaluate_cmd",
    "benchmark": "benchmark_cmd",
    "predict": "predict_cmd",
    "domains": "domains_cmd",
    "push": "push_cmd",
    "card": "card_cmd",
    "convert": "convert_cmd",
    "onnx": "onnx_cmd",
    "demo": "demo_cmd",
    "app": "app_cmd",
    "zoo": "zoo_cmd",
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


class Terminated(BaseException):
    """SIGTERM, delivered as an exception so every `finally`/cleanup path runs (like SIGINT)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _one_line(exc: BaseException) -> str:
    """An exception as one line: user errors carry the file/field and the fix already."""
    text = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(exc).__name__


# What a user can fix (bad input, missing file, refused output): exit 2, message as is.
_USER_ERRORS = (ValueError, OSError, KeyError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; errors print one line (exit 2), or a traceback with --debug.

    Interrupts (Ctrl-C / SIGINT → 130, SIGTERM → 143) print one line; outputs are written
    atomically, so an interrupted command leaves nothing half-written behind.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(
        str(v) for v in (args.command, getattr(args, f"{args.command}_command", None)) if v
    )
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mclstexp {name}: interrupted (SIGINT); partial outputs were removed",
              file=sys.stderr)
        return 130
    except Terminated:
        print(f"mclstexp {name}: interrupted (SIGTERM); partial outputs were removed",
              file=sys.stderr)
        return 143
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"mclstexp {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: never a raw traceback
        if args.debug:
            raise
        print(f"mclstexp {name}: error: {type(exc).__name__}: {_one_line(exc)} (unexpected; "
              "rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
