"""Publishing: push checkpoints to the Hugging Face Hub and write their model cards.

Not Hub-bound: this subpackage imports the core modules, never the other way round.
"""

from __future__ import annotations

from .cards import DATASETS, load_results, render_card, write_card
from .push import PushResult, push_checkpoint, push_model

__all__ = [
    "DATASETS",
    "PushResult",
    "load_results",
    "push_checkpoint",
    "push_model",
    "render_card",
    "write_card",
]
