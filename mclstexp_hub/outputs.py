"""What `--overwrite` may replace: only an output this tool wrote before, never an input.

One home for the rule every writing command follows (data build, train, bank build, convert,
predict, benchmark, domains, demo):

* the output must not equal an input, nor contain one (``--out`` = the data folder or one of
  its ancestors would otherwise delete the raw data; the converter's ``--out`` = the folder of
  the checkpoint it reads would delete that checkpoint);
* an existing output is replaced only with ``--overwrite`` *and* only when it is recognisably
  ours — a folder holding this tool's marker file (``mclstexp_dataset.json``, a checkpoint's
  ``config.json`` with ``model_type: mclstexp``, …) or a file of the kind we write; anything
  else is refused with the reason.

Pure Python (no torch), so the data CLI stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputRefused(ValueError):
    """The output path is unsafe to write or replace (the message says why and what to do)."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_not_an_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that equals an input or contains one (it would be deleted/replaced)."""
    target = _resolved(out)
    for raw in inputs:
        if raw is None or raw == "":
            continue
        source = _resolved(raw)
        if source == target or _is_within(source, target):
            raise OutputRefused(
                f"output {out} {'is' if source == target else 'contains'} the input {raw}; "
                "writing there would destroy the input. Choose an --out outside the input data."
            )


# ------------------------------------------------------------------------ recognisers
def is_dataset_folder(path: Path) -> bool:
    """A folder written by `mclstexp data build`."""
    return (path / "mclstexp_dataset.json").is_file()


def is_checkpoint_folder(path: Path) -> bool:
    """A folder written by this package's checkpoint writer (config.json of model_type mclstexp)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "mclstexp"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def is_benchmark_folder(path: Path) -> bool:
    """A folder written by `mclstexp benchmark` (its summary or per-fold results)."""
    return (path / "summary.json").is_file() or (path / "benchmark_options.json").is_file() or any(
        path.glob("fold_*")
    )


def is_prediction_h5ad(path: Path) -> bool:
    """An .h5ad written by `mclstexp predict` (it carries uns['mclstexp'])."""
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            return "uns" in handle and "mclstexp" in handle["uns"]
    except (OSError, ImportError):
        return False


ZARR_FORMAT_MARKER = "mclstexp-prediction"
"""``attrs["mclstexp"]["format"]`` of the SpatialData stores `predict --out *.zarr` writes."""


def is_prediction_zarr(path: Path) -> bool:
    """A SpatialData .zarr store written by `mclstexp predict` (root attrs carry our marker).

    Reads the root group's attributes as JSON (zarr v3 ``zarr.json`` or v2 ``.zattrs``), so no
    zarr/spatialdata import is needed.
    """
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        meta = path / name
        if not meta.is_file():
            continue
        try:
            attrs = json.loads(meta.read_text(encoding="utf-8"))
            attrs = attrs.get(key, {}) if key else attrs
            return attrs.get("mclstexp", {}).get("format") == ZARR_FORMAT_MARKER
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return False
    return False


def is_spot_bank_file(path: Path) -> bool:
    """A spot_bank.safetensors written by this package (format=mclstexp-spot-bank header)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 100_000_000:
                return False
            header = json.loads(handle.read(size))
        return header.get("__metadata__", {}).get("format") == "mclstexp-spot-bank"
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike | None] = (),
    is_ours: Callable[[Path], bool] | None = None,
    what: str = "output",
    option: str = "--out",
) -> Path:
    """Validate `out` before any slow work; returns it as a Path.

    Raises FileExistsError when it exists and `overwrite` is False, `OutputRefused` when it is
    or contains an input, or exists but is not recognisably ours (`is_ours`).
    """
    path = Path(out)
    check_not_an_input(path, inputs)
    if not path.exists() and not path.is_symlink():
        return path
    if path.is_dir() and not any(path.iterdir()) and is_ours is not None:
        return path  # an empty folder holds nothing to lose
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another {option} or pass --overwrite to replace it."
        )
    if path.is_symlink():
        raise OutputRefused(f"{path} is a symbolic link; --overwrite never replaces links.")
    if is_ours is None or not is_ours(path):
        raise OutputRefused(
            f"{path} exists and is not a {what} written by mclstexp; --overwrite only replaces "
            f"this tool's own outputs. Move it away or choose another {option}."
        )
    return path


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def _defer_interrupts() -> tuple[dict, list]:
    """Swap in handlers that only note SIGINT/SIGTERM (main thread only: Python runs signal
    handlers there, whichever thread the OS delivered the signal to)."""
    previous: dict = {}
    pending: list = []
    if threading.current_thread() is not threading.main_thread():
        return previous, pending
    for sig in _INTERRUPTS:
        handler = signal.getsignal(sig)
        if handler is not None:  # None: a handler not installed from Python; leave it alone
            previous[sig] = signal.signal(sig, lambda signum, _frame: pending.append(signum))
    return previous, pending


def _deliver_deferred(previous: dict, pending: list) -> None:
    """Put the original handlers back, then raise what arrived meanwhile (idempotent)."""
    while previous:
        sig, handler = previous.popitem()
        signal.signal(sig, handler)
    while pending:
        signal.raise_signal(pending.pop(0))


@contextmanager
def staging(parent: str | os.PathLike, prefix: str, *, file: bool = False,
            suffix: str = "") -> Iterator[Path]:
    """A new hidden temporary folder (or empty file) in `parent`, removed on every exit.

    The one way commands get the scratch space an output is written in before it is renamed
    into place: whatever is still there when the block ends — normally, by an error, or by
    Ctrl-C / SIGTERM — is partial work and is deleted. An interrupt that arrives while the
    folder is being created is held until its removal is armed and then delivered, so one that
    lands the moment the folder appears cannot leave it behind.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    previous, pending = _defer_interrupts()
    path: Path | None = None
    try:
        if file:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            os.close(fd)
        else:
            name = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        path = Path(name)
        _deliver_deferred(previous, pending)  # a held interrupt is raised here, inside the try
        yield path
    finally:
        _deliver_deferred(previous, pending)
        if path is not None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                path.unlink(missing_ok=True)


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the complete file `tmp` onto `path` with normal permissions (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary sibling file and a rename."""
    path = Path(path)
    with staging(path.parent, f".{path.name}.", file=True, suffix=".partial") as tmp:
        tmp.write_text(text, encoding="utf-8")
        return publish_file(tmp, path)


def replace_folder(new: Path, target: Path, keep: Iterable[str] = ()) -> Path:
    """Rename the complete folder `new` onto `target` — the one publish step of folder outputs.

    An old `target` (already checked replaceable by `check_output`) is moved aside first and
    deleted only after the rename, so readers see the old or the new output, never a mix; if
    the swap fails the old one is put back as it was. `keep`: entries of the old folder carried
    over into the new one (e.g. a Trainer's resume states). `new` gets normal permissions
    (mkdtemp makes 0700).
    """
    new, target = Path(new), Path(target)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        return target
    with staging(target.parent, f".{target.name}.old-") as old:
        previous = old / "old"
        os.replace(target, previous)
        moved: list[str] = []
        try:
            for name in keep:
                if os.path.lexists(previous / name):
                    os.replace(previous / name, new / name)
                    moved.append(name)
            os.replace(new, target)
        except BaseException:
            if not os.path.lexists(target):
                for name in moved:
                    if os.path.lexists(new / name):
                        os.replace(new / name, previous / name)
                os.replace(previous, target)
            raise
    return target


__all__ = [
    "ZARR_FORMAT_MARKER",
    "OutputRefused",
    "check_not_an_input",
    "check_output",
    "is_benchmark_folder",
    "is_checkpoint_folder",
    "is_dataset_folder",
    "is_prediction_h5ad",
    "is_prediction_zarr",
    "is_spot_bank_file",
    "publish_file",
    "replace_folder",
    "staging",
    "write_text_atomic",
]
