"""Errors raised by the data subpackage.

``DataError`` subclasses ``ValueError`` so the CLI dispatcher prints it as a user error; every
message names the file or field at fault and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be turned into a section or dataset as it stands."""


def missing_file(path: str | Path, what: str, fix: str) -> FileNotFoundError:
    """A FileNotFoundError that says what the file was for and how to provide it."""
    return FileNotFoundError(f"{what} not found: {path}. {fix}")


def preview(items: Iterable[object], limit: int = 10) -> str:
    """Comma-separated first ``limit`` items, with a count of the rest (for error messages)."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    if len(items) > limit:
        head += f", … ({len(items) - limit} more)"
    return head
