"""Data: readers (HER2+ ST, cSCC, Visium, h5ad) → preprocessing → Hub-ready patch datasets.

Data flows one way: raw files → one AnnData per tissue section (``readers``) → transformed
panel expression (``preprocess``) → 224 × 224 patches (``patches``, cut by the one slide reader
``mclstexp_hub.models.mclstexp.slide_io_mclstexp``) → parquet shards with ``datasets`` features
(``hf_dataset``). ``build`` chains them; ``mclstexp data build`` is the command line. This
subpackage never imports torch or transformers; heavy modules load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_getattr
from .errors import DataError

_LAZY = {
    "load_st_dataset": "hf_dataset",
    "build_patch_dataset": "hf_dataset",
    "load_dataset_metadata": "hf_dataset",
    "build_dataset": "build",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["DataError", *_LAZY]
