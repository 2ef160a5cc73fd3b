"""Publishing: push checkpoints to the Hugging Face Hub and write their model cards.

Not Hub-bound: this subpackage imports the core modules, never the other way round. Its
members load on first use, so the CLI's `--help` does not pay for transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DATASETS": "cards",
    "load_results": "cards",
    "render_card": "cards",
    "write_card": "cards",
    "PushResult": "push",
    "push_checkpoint": "push",
    "push_model": "push",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_LAZY)
