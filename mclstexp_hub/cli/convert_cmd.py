"""`mclstexp convert`: the authors' `best_{fold}.pt` → an mclstexp checkpoint folder.

The converter lives in the repository's `conversion/convert_mclstexp_original.py` (it imports
torch, so it is loaded only when the command runs); every option after `convert` is its own
(`mclstexp convert --help`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ._options import add_command

MODULE = "conversion.convert_mclstexp_original"


def load_converter() -> ModuleType:
    """The converter module: importable `conversion` package, else the checkout's file."""
    try:
        return importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in ("conversion", MODULE):
            raise
    script = Path(__file__).resolve().parents[2] / "conversion" / "convert_mclstexp_original.py"
    if not script.is_file():
        raise ImportError(
            f"mclstexp convert needs conversion/convert_mclstexp_original.py (not found at "
            f"{script}); run it from a checkout of the repository."
        )
    spec = importlib.util.spec_from_file_location("convert_mclstexp_original", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("convert_mclstexp_original", module)
    spec.loader.exec_module(module)
    return module


def _options_file() -> Path:
    return Path(__file__).resolve().parents[2] / "conversion" / "options.py"


def _convert(args: argparse.Namespace) -> int:
    print(load_converter().run(args).format())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "convert",
        "convert the authors' checkpoint (best_{fold}.pt) into an mclstexp checkpoint folder",
    )
    options = _options_file()
    if not options.is_file():
        return  # not a checkout: the converter is not shipped
    spec = importlib.util.spec_from_file_location("_mclstexp_conversion_options", options)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_parser(parser=p)
    p.set_defaults(func=_convert)
