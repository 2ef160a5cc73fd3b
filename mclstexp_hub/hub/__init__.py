"""Publishing: push checkpoints to the Hugging Face Hub and write their model cards.

Not Hub-bound: this subpackage imports the core modules, never the other way round. Its
members load on first use, so the CLI's `--help` does not pay for transformers.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "DATASETS": "cards",
    "load_results": "cards",
    "render_card": "cards",
    "write_card": "cards",
    "PushResult": "push",
    "push_checkpoint": "push",
    "push_model": "push",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
