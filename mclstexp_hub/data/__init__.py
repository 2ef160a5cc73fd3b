"""Data: readers (HER2+ ST, cSCC, Visium, h5ad) → preprocessing → Hub-ready patch datasets.

Data flows one way: raw files → one AnnData per tissue section (``readers``) → transformed
panel expression (``preprocess``) → 224 × 224 patches (``patches``, cut by the one slide reader
``mclstexp_hub.models.mclstexp.slide_io_mclstexp``) → parquet shards with ``datasets`` features
(``hf_dataset``). ``build`` chains them; ``mclstexp data build`` is the command line. This
subpackage never imports torch or transformers; heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DataError

_LAZY = {
    "load_st_dataset": "hf_dataset",
    "build_patch_dataset": "hf_dataset",
    "load_dataset_metadata": "hf_dataset",
    "build_dataset": "build",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = ["DataError", *_LAZY]
