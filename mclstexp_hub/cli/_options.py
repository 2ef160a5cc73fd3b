"""Options shared by the `mclstexp` sub-commands, declared once (names, defaults, help).

Pure argparse: nothing here imports torch, transformers or the data stack, so that every
sub-command's `register()` stays cheap (`mclstexp X --help` starts in well under 2 s).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

# the one list of each (a light module: no torch, no numpy)
from ..models.mclstexp.precision_mclstexp import BACKENDS, PRECISIONS


class ListOption(argparse.Action):
    """A list option that takes `B4 C2`, `B4,C2` or `B4, C2` alike (use with nargs="+"/"*").

    Items are split on commas, stripped, converted with `item_type` and checked against
    `valid` here, after splitting (argparse's own `type`/`choices` would see "B4,C2" whole).
    """

    def __init__(self, option_strings, dest, item_type: Any = str, valid: Iterable[Any] | None = None,
                 **kwargs: Any) -> None:
        self.item_type = item_type
        self.valid = None if valid is None else list(valid)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        raw = values if isinstance(values, list) else [values]
        items: list[Any] = []
        for chunk in raw:
            for text in str(chunk).split(","):
                text = text.strip()
                if not text:
                    continue
                try:
                    item = self.item_type(text)
                except ValueError:
                    parser.error(f"{option_string}: {text!r} is not a valid "
                                 f"{getattr(self.item_type, '__name__', 'value')}")
                if self.valid is not None and item not in self.valid:
                    parser.error(f"{option_string}: invalid choice {text!r} "
                                 f"(choose from {', '.join(map(str, self.valid))})")
                items.append(item)
        if not items and self.nargs == "+":
            parser.error(f"{option_string}: give at least one value")
        setattr(namespace, self.dest, items)




def retrieval_k_value(value: str) -> int | str:
    """`--retrieval-k`: a positive integer or `auto` (chosen by inner cross-validation)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto'; got {value!r}") from None


def add_precision_option(p: argparse.ArgumentParser, default: str | None = "auto",
                         default_text: str = "auto") -> None:
    """`--precision`: tower arithmetic (auto = bf16 where the hardware has it natively)."""
    p.add_argument("--precision", choices=list(PRECISIONS), default=default,
                   help="auto = bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX) or "
                        "CUDA, else fp32 (convolutions run channels-last in both); recorded "
                        f"with the output (default: {default_text})")


def add_backend_option(p: argparse.ArgumentParser, recorded_in: str = "metrics.json") -> None:
    """`--backend`: the image tower's runtime (`precision_mclstexp.BACKENDS`)."""
    p.add_argument("--backend", choices=list(BACKENDS), default="auto",
                   help="image tower runtime: auto = the checkpoint's ONNX export "
                        "(`mclstexp onnx DIR`) when valid, on the CPU: ONNX Runtime for fp32, "
                        "OpenVINO for bf16 (CPUs with native bf16); else torch. onnxruntime / "
                        "openvino: that runtime, refused when it cannot serve the run. "
                        f"Recorded in {recorded_in} (default: auto)")


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A sub-command parser with its one-line `help` (the listing) and longer `description`."""
    return subparsers.add_parser(name, help=help, description=description)


def add_subcommands(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:
    """A required nested SUBCOMMAND (e.g. `mclstexp bank build`), its name stored in `dest`."""
    sub = parser.add_subparsers(dest=dest, metavar="SUBCOMMAND")
    sub.required = True
    return sub


def add_dataset_option(p: argparse.ArgumentParser, help: str = "patch dataset folder or Hub dataset id") -> None:
    """`--dataset` (required): a built patch dataset."""
    p.add_argument("--dataset", required=True, help=help)


def add_model_option(p: argparse.ArgumentParser, help: str = "checkpoint directory or Hub model id") -> None:
    """`--model` (required): a checkpoint."""
    p.add_argument("--model", required=True, help=help)


def add_out_option(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """`--out`: where the command writes."""
    p.add_argument("--out", required=required, help=help)


def add_sections_option(
    p: argparse.ArgumentParser, help: str = "sections to include", nargs: str = "+"
) -> None:
    """`--sections S [S ...]` (default: all sections)."""
    p.add_argument("--sections", nargs=nargs, default=None, help=help)


def add_batch_size_option(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """`--batch-size N`."""
    p.add_argument("--batch-size", type=int, default=default, help=help)


def add_k_option(p: argparse.ArgumentParser, help: str = "retrieval k (default: the model's)") -> None:
    """`--k N`: neighbours retrieved per prediction (default: the checkpoint's retrieval_k)."""
    p.add_argument("--k", type=int, default=None, help=help)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """`--device cpu|cuda` (default: cuda when available)."""
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")


def add_seed_option(p: argparse.ArgumentParser) -> None:
    """`--seed N` (default 0)."""
    p.add_argument("--seed", type=int, default=0)


def add_overwrite_option(p: argparse.ArgumentParser, help: str | None = "replace an existing --out") -> None:
    """`--overwrite`: replace existing outputs instead of refusing."""
    p.add_argument("--overwrite", action="store_true", help=help)


def add_quiet_option(p: argparse.ArgumentParser, help: str | None = "no progress bars") -> None:
    """`--quiet`: no progress bars (commands pass `progress=not args.quiet`)."""
    p.add_argument("--quiet", action="store_true", help=help)


def add_run_options(
    p: argparse.ArgumentParser,
    overwrite: str | None = "replace an existing --out",
    quiet: str | None = "no progress bars",
    seed: bool = False,
) -> None:
    """The trailing `[--seed] --overwrite --quiet` most writing commands share."""
    if seed:
        add_seed_option(p)
    add_overwrite_option(p, overwrite)
    add_quiet_option(p, quiet)


def option_values(args: argparse.Namespace, names: Iterable[str], **renamed: str) -> dict[str, Any]:
    """Keyword arguments taken 1:1 from parsed options: `names` keep their name, `renamed`
    maps a keyword to the option's dest (e.g. ``genes_file="genes"``)."""
    values = {name: getattr(args, name) for name in names}
    values.update({kw: getattr(args, dest) for kw, dest in renamed.items()})
    return values


def check_choice(option: str, value: Any, choices: Iterable[str]) -> None:
    """Refuse `value` of `option` unless it is one of `choices` (for choices that live in
    heavy modules and so are checked when the command runs, not when the parser is built)."""
    allowed = sorted(choices)
    values = value if isinstance(value, list | tuple) else [value]
    bad = [v for v in values if v is not None and v not in allowed]
    if bad:
        raise ValueError(f"{option}: invalid choice {bad[0]!r}; choose one of {allowed}.")
