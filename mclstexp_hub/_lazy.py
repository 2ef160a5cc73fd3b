"""Lazy package exports: a name loads its module on first use (PEP 562 `__getattr__`).

Used by the subpackages whose members pull in heavy libraries (transformers, SciPy, anndata), so
that `--help`, the data tools and the PyTorch-free predict path start fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving `exports` (name → submodule of `package`) on demand."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module}", package), name)

    return __getattr__
