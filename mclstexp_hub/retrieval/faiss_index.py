"""Optional FAISS index over a spot bank, for banks too large for exact search.

`SpotBank.search` (exact, chunked) is the reference: it scans every bank spot, so its cost
grows with bank size. A FAISS index answers the same question — cosine top-k of image
embeddings among bank embeddings — with the same contract, `(similarities, indices)` each
(Q, k), so its neighbours can feed the same weighting (`predict_with_index`):

- ``flat``: exact inner product over L2-normalised vectors (same neighbours as exact search,
  FAISS's BLAS kernels);
- ``ivf``: inverted file (k-means cells, `nprobe` cells scanned per query) — approximate;
- ``hnsw``: graph search (`M` links, `ef_search` beam) — approximate, slow to build.

Approximate kinds must have their recall against exact search measured
(`recall_at_k`; `benchmarks/bench_retrieval.py` does it).

FAISS is an optional dependency: ``pip install 'mclstexp-hub[faiss]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

KINDS = ("flat", "ivf", "hnsw")
_INSTALL_HINT = "pip install 'mclstexp-hub[faiss]'  (or: pip install faiss-cpu)"


def import_faiss():
    """Import faiss or raise an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - exercised only without faiss
        raise ImportError(
            f"The FAISS spot index needs the optional dependency faiss: {_INSTALL_HINT}. "
            "Exact search (`SpotBank.search`, the default) needs nothing extra."
        ) from exc
    return faiss


def _normalised(x: Any, name: str) -> np.ndarray:
    """Float32 C-contiguous rows of unit L2 norm (zero rows stay zero), as torch normalises."""
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a (n, dim) matrix; got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contain NaN or inf values.")
    return np.ascontiguousarray(torch.nn.functional.normalize(t, dim=-1).numpy())


def default_nlist(n: int) -> int:
    """≈ √n IVF cells (1,000 for a million spots), at least 1, with ≥ 39 points per cell so
    k-means has enough data; more cells make search cheaper but training slower."""
    return max(1, min(int(np.sqrt(n) + 0.5), n // 39))


@dataclass
class FaissSpotIndex:
    """A FAISS inner-product index over L2-normalised bank embeddings (= cosine similarity)."""

    index: Any
    kind: str
    n_spots: int
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    # ivf: re-answer queries whose scanned cells held fewer than k spots with more cells
    # (nprobe doubled until complete) instead of raising; `retrieval.auto` turns it on.
    widen_short_rows: bool = False

    @classmethod
    def from_bank(
        cls,
        bank: SpotBank | torch.Tensor | np.ndarray,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
        threads: int | None = None,
    ) -> FaissSpotIndex:
        """Index a bank's embeddings (or an (N, D) matrix).

        ivf: `nlist` cells (default ≈ √N), `nprobe` scanned per query (default nlist/16,
        at least 8); k-means is trained on at most `train_size` (default 64·nlist) random
        bank rows drawn with `seed`. hnsw: `hnsw_m` links, `ef_construction`,
        `ef_search` (default 128).
        """
        faiss = import_faiss()
        if kind not in KINDS:
            raise ValueError(f"FaissSpotIndex kind must be one of {KINDS}; got {kind!r}.")
        embeddings = bank.embeddings if isinstance(bank, SpotBank) else bank
        x = _normalised(embeddings, "bank embeddings")
        n, dim = x.shape
        if n == 0:
            raise ValueError("Cannot index an empty bank; build it from at least one spot.")
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        params: dict[str, Any] = {"metric": "inner_product on L2-normalised vectors (cosine)"}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
            index.add(x)
        elif kind == "ivf":
            nlist = int(nlist or default_nlist(n))
            if not 1 <= nlist <= n:
                raise ValueError(f"ivf: nlist must be in [1, {n}] (bank size); got {nlist}.")
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed)
            train_size = int(train_size or 64 * nlist)
            if train_size < n:
                rows = np.random.default_rng(seed).choice(n, size=train_size, replace=False)
                index.train(x[np.sort(rows)])
            else:
                index.train(x)
            index.add(x)
            index.nprobe = int(nprobe or max(8, nlist // 16))
            index.nprobe = min(index.nprobe, nlist)
            params.update(nlist=nlist, nprobe=int(index.nprobe), train_size=min(train_size, n))
        else:
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.add(x)
            index.hnsw.efSearch = int(ef_search or 128)
            params.update(hnsw_m=int(hnsw_m), ef_construction=int(ef_construction),
                          ef_search=int(index.hnsw.efSearch))
        return cls(index=index, kind=kind, n_spots=n, dim=dim, params=params)

    def __len__(self) -> int:
        return self.n_spots

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall after building (ivf: nprobe; hnsw: ef_search)."""
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError(f"nprobe applies to ivf indexes, not {self.kind!r}.")
            self.index.nprobe = int(nprobe)
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError(f"ef_search applies to hnsw indexes, not {self.kind!r}.")
            self.index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)

    def search(self, queries: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k: (similarities float32, indices int64), each (Q, k), best first —
        the contract of `SpotBank.search`."""
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"retrieval k must be a positive integer; got {k!r}.")
        if k > self.n_spots:
            raise ValueError(
                f"retrieval k={k} is larger than the indexed bank ({self.n_spots} spots); "
                f"use k <= {self.n_spots}."
            )
        q = _normalised(queries, "query embeddings")
        if q.shape[0] == 0:
            raise ValueError("No query embeddings (0 rows); nothing to search for.")
        if q.shape[1] != self.dim:
            raise ValueError(
                f"Query embeddings must be (n, {self.dim}) to match the index; got {q.shape}."
            )
        sims, idx = self.index.search(q, int(k))
        if self.widen_short_rows and self.kind == "ivf" and (idx < 0).any():
            sims, idx = self._widen(q, int(k), sims, idx)
        if (idx < 0).any():
            n_bad = int((idx < 0).any(axis=1).sum())
            hint = ("raise nprobe (set_search_params(nprobe=...))" if self.kind == "ivf"
                    else "raise ef_search (set_search_params(ef_search=...))")
            raise ValueError(
                f"The {self.kind} index found fewer than k={k} neighbours for {n_bad} of "
                f"{q.shape[0]} queries (too few candidates scanned); {hint}, lower k, or use "
                "kind='flat' / exact search."
            )
        return torch.from_numpy(sims.astype(np.float32)), torch.from_numpy(idx.astype(np.int64))

    def _widen(self, q: np.ndarray, k: int, sims: np.ndarray, idx: np.ndarray):
        """Search rows with missing neighbours again with ever more cells (up to all)."""
        faiss = import_faiss()
        nprobe, nlist = int(self.index.nprobe), int(self.index.nlist)
        rows = np.flatnonzero((idx < 0).any(axis=1))
        while rows.size and nprobe < nlist:
            nprobe = min(2 * nprobe, nlist)
            s2, i2 = self.index.search(np.ascontiguousarray(q[rows]), k,
                                       params=faiss.SearchParametersIVF(nprobe=nprobe))
            sims[rows], idx[rows] = s2, i2
            rows = rows[(i2 < 0).any(axis=1)]
        return sims, idx

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> str:
        """Write the index (FAISS's own format), atomically."""
        faiss = import_faiss()
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaissSpotIndex:
        faiss = import_faiss()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No FAISS index at {path}; build one with FaissSpotIndex.from_bank.")
        index = faiss.read_index(path)
        if isinstance(index, faiss.IndexIVF):
            kind, params = "ivf", {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
        elif isinstance(index, faiss.IndexHNSW):
            kind, params = "hnsw", {"ef_search": int(index.hnsw.efSearch)}
        else:
            kind, params = "flat", {}
        return cls(index=index, kind=kind, n_spots=int(index.ntotal), dim=int(index.d), params=params)


def predict_with_index(
    bank: SpotBank,
    index: FaissSpotIndex,
    queries: Any,
    k: int,
    distance: str = "l1",
    weighting: str = "inverse_square",
    return_neighbours: bool = False,
    query_chunk: int = 2048,
):
    """Expression (Q, G) from image embeddings with the index supplying the neighbours.

    The index only finds neighbours; weights and averaging are `SpotBank.retrieve`'s (in
    bounded query blocks). `query_chunk` is validated for backwards compatibility. With
    `return_neighbours`, returns (expression, indices, weights).
    """
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be positive; got {query_chunk}.")
    expression, indices, weights = bank.retrieve(
        queries, k, distance, weighting, searcher=index
    )
    return (expression, indices, weights) if return_neighbours else expression


def recall_at_k(exact_indices: Any, approx_indices: Any) -> float:
    """Mean fraction of each query's exact top-k found in the approximate top-k."""
    exact = np.asarray(exact_indices)
    approx = np.asarray(approx_indices)
    if exact.shape != approx.shape or exact.ndim != 2:
        raise ValueError(f"recall_at_k: shapes differ or not 2-D: {exact.shape} vs {approx.shape}.")
    if exact.size == 0:
        raise ValueError("recall_at_k: no queries.")
    # Row-wise set intersection, vectorised: sort both, then count matches via searchsorted.
    exact_sorted = np.sort(exact, axis=1)
    approx_sorted = np.sort(approx, axis=1)
    hits = 0
    for e_row, a_row in zip(exact_sorted, approx_sorted, strict=True):
        hits += np.intersect1d(e_row, a_row, assume_unique=True).size
    return hits / exact.size


__all__ = ["KINDS", "FaissSpotIndex", "default_nlist", "import_faiss", "predict_with_index",
           "recall_at_k"]
