"""Data: readers (HER2+ ST, cSCC, Visium, h5ad) → preprocessing → Hub-ready patch datasets.

Data flows one way: raw files → one AnnData per tissue section (``readers``) → transformed
panel expression (``preprocess``) → 224 × 224 patches (``patches``) → parquet shards with
``datasets`` features (``hf_dataset``). ``build`` chains them; ``mclstexp data build`` is the
command line. This subpackage never imports the model code.
"""

from __future__ import annotations

from .errors import DataError

__all__ = ["DataError"]
