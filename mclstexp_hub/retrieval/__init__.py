"""Retrieval beyond the core's exact chunked search: an optional FAISS index.

`faiss` is imported lazily (only when an index is built or loaded), so importing this
package never fails without it; install it with ``pip install 'mclstexp-hub[faiss]'``.
"""

from __future__ import annotations

from .faiss_index import (
    KINDS,
    FaissSpotIndex,
    default_nlist,
    import_faiss,
    predict_with_index,
    recall_at_k,
)

__all__ = ["KINDS", "FaissSpotIndex", "default_nlist", "import_faiss", "predict_with_index",
           "recall_at_k"]
