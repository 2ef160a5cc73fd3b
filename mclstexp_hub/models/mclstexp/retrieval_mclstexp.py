"""Retrieval arithmetic in NumPy: cosine top-k, distance weights, the weighted mean and spread.

The one implementation behind `SpotBank.retrieve` (PyTorch tensors in and out) and the
PyTorch-free prediction runtime (`mclstexp predict` with the ONNX Runtime tower, which never
imports torch). Also the spot-bank file format's reader, for the same two callers.

Hub-bound remote code: imports only third-party packages (NumPy; safetensors when reading).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, get_args

import numpy as np

RetrievalDistance = Literal["l1", "l2", "cosine"]
RetrievalWeighting = Literal["inverse_square", "mean", "softmax"]
# The one list of allowed values per field (the config validates against these types).
RETRIEVAL_DISTANCES: tuple[str, ...] = get_args(RetrievalDistance)
RETRIEVAL_WEIGHTINGS: tuple[str, ...] = get_args(RetrievalWeighting)

SPOT_BANK_FILENAME = "spot_bank.safetensors"
# A FAISS index of the bank saved beside it (`mclstexp bank build --index`; mclstexp_hub.retrieval).
SAVED_INDEX_FILENAME = "spot_bank.faiss"
BANK_FORMAT = "mclstexp-spot-bank"

# A spot whose embedding equals the query exactly would get weight 1/0; distances are floored
# at this value so such a spot dominates the average instead of producing inf/NaN.
MIN_DISTANCE = 1e-8
# Queries handled at once when turning neighbours into weights (bounds peak memory).
QUERY_BLOCK = 1024


def check_k(k: int, n: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"retrieval_k must be a positive integer; got {k!r}.")
    if k > n:
        raise ValueError(
            f"retrieval_k={k} is larger than the spot bank ({n} spots). Use k <= {n} "
            "(e.g. `model.config.retrieval_k = ...`) or a larger bank."
        )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norms floored at 1e-12, as torch's normalize)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    return x / np.maximum(norms, 1e-12)[:, None]


def _rows_topk(sim: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row, unordered (k < sim.shape[1]); a
    compact copy, so the (rows, columns) partition result is freed at once."""
    return np.argpartition(sim, sim.shape[1] - k, axis=1)[:, sim.shape[1] - k :].copy()


def cosine_topk(queries: np.ndarray, bank: np.ndarray, k: int,
                chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of each query (Q, D) over `bank` (N, D), most similar first.

    The bank is scanned in chunks of `chunk_size` rows and the queries in blocks of
    `QUERY_BLOCK`, with a running top-k per block (each chunk's own top-k merged with the best
    so far), so peak memory is O(QUERY_BLOCK * chunk_size) however many queries and spots there
    are. The per-row selection runs in threads (NumPy releases the GIL there). Returns
    (similarities float32, indices int64), each (Q, k).
    """
    n = int(np.shape(bank)[0])
    check_k(k, n)
    q = _unit_rows(queries)
    blocks = [slice(i, i + QUERY_BLOCK) for i in range(0, q.shape[0], QUERY_BLOCK)]
    best = [(np.empty((q[b].shape[0], 0), dtype=np.float32),
             np.empty((q[b].shape[0], 0), dtype=np.int64)) for b in blocks]
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        for start in range(0, n, chunk_size):
            unit = _unit_rows(bank[start : start + chunk_size])
            for i, block in enumerate(blocks):
                sim = q[block] @ unit.T
                if k < sim.shape[1]:
                    rows = [slice(r, r + _SELECT_ROWS) for r in range(0, sim.shape[0], _SELECT_ROWS)]
                    cols = np.concatenate(list(pool.map(lambda r, m=sim: _rows_topk(m[r], k), rows)))
                    sim = np.take_along_axis(sim, cols, 1)
                else:
                    cols = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
                best_sim = np.concatenate([best[i][0], sim], axis=1)
                best_idx = np.concatenate([best[i][1], cols.astype(np.int64) + start], axis=1)
                if k < best_sim.shape[1]:
                    keep = _rows_topk(best_sim, k)
                    best_sim = np.take_along_axis(best_sim, keep, 1)
                    best_idx = np.take_along_axis(best_idx, keep, 1)
                best[i] = (best_sim, best_idx)
    sims = np.concatenate([b[0] for b in best]) if best else np.empty((0, k), dtype=np.float32)
    idx = np.concatenate([b[1] for b in best]) if best else np.empty((0, k), dtype=np.int64)
    order = np.argsort(-sims, axis=1, kind="stable")
    return (np.ascontiguousarray(np.take_along_axis(sims, order, 1)),
            np.ascontiguousarray(np.take_along_axis(idx, order, 1)))


_SELECT_ROWS = 256  # query rows per top-k selection task


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def neighbour_weights(queries: np.ndarray, neighbours: np.ndarray, distance: str,
                      weighting: str) -> np.ndarray:
    """Weights (Q, k) summing to 1 from queries (Q, D) to their neighbours (Q, k, D).

    inverse_square: w ∝ 1/d² (the paper; the reference code uses L1 d); mean: uniform (BLEEP);
    softmax: w ∝ exp(-d). Computed in float32, as the reference code does (distances are
    pairwise sums over D, so float64 changes the weights by ~1e-9).
    """
    _check_weighting(distance, weighting)
    return _weights_in_place(np.asarray(queries, dtype=np.float32),
                             np.array(neighbours, dtype=np.float32), distance, weighting)


def _check_weighting(distance: str, weighting: str) -> None:
    if distance not in RETRIEVAL_DISTANCES:
        raise ValueError(f"retrieval distance must be one of {RETRIEVAL_DISTANCES}; got {distance!r}.")
    if weighting not in RETRIEVAL_WEIGHTINGS:
        raise ValueError(f"retrieval weighting must be one of {RETRIEVAL_WEIGHTINGS}; got {weighting!r}.")


def _weights_in_place(q: np.ndarray, nb: np.ndarray, distance: str, weighting: str) -> np.ndarray:
    """`neighbour_weights` on float32 arrays, overwriting the gathered neighbours `nb`."""
    q_count, k = nb.shape[:2]
    if weighting == "mean":
        return np.full((q_count, k), 1.0 / k, dtype=np.float32)
    if distance == "cosine":
        qn = q / np.maximum(np.sqrt(np.einsum("qd,qd->q", q, q)), 1e-12)[:, None]
        norms = np.sqrt(np.einsum("qkd,qkd->qk", nb, nb))
        d = 1.0 - np.einsum("qd,qkd->qk", qn, nb) / np.maximum(norms, 1e-12)
    else:
        nb -= q[:, None, :]
        if distance == "l1":
            np.abs(nb, out=nb)
        else:
            np.square(nb, out=nb)
        d = nb.sum(-1)
        if distance == "l2":
            np.sqrt(d, out=d)
    if weighting == "inverse_square":
        w = 1.0 / np.square(np.maximum(d, np.float32(MIN_DISTANCE)))
    else:
        w = np.exp(d.min(axis=1, keepdims=True) - d)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32, copy=False)


# Bytes of gathered neighbour expression per query block in `retrieve_arrays` (one block per
# thread): small enough to stay in cache-sized pieces, which is ~4x faster than 1024-query
# blocks at 1e4 queries x k=200 x 785 genes (and bounds memory at any Q).
GATHER_BLOCK_BYTES = 48 * 2**20


def retrieve_arrays(
    queries: np.ndarray,
    embeddings: np.ndarray,
    expression: np.ndarray,
    k: int,
    distance: str = "l1",
    weighting: str = "inverse_square",
    indices: np.ndarray | None = None,
    return_neighbour_spread: bool = False,
    chunk_size: int = 65536,
) -> tuple[np.ndarray, ...]:
    """(expression (Q, G), neighbour indices (Q, k), weights (Q, k)[, spread (Q, G)]).

    Neighbours are `indices` when given (from an index such as FAISS), else exact cosine top-k.
    The spread is the weighted standard deviation of the k neighbours' expression around the
    prediction (sqrt(sum_k w_k (x_kg - pred_g)^2)), computed shifted by the first neighbour so
    it is exactly zero when all neighbours agree. Work goes in query blocks sized so that the
    gathered (q, k, G) neighbour expression is at most `GATHER_BLOCK_BYTES`, one block per
    thread, so memory stays bounded however many queries there are.
    """
    _check_weighting(distance, weighting)
    queries = np.asarray(queries, dtype=np.float32)
    if indices is None:
        _, indices = cosine_topk(queries, embeddings, k, chunk_size=chunk_size)
    indices = np.asarray(indices, dtype=np.int64)
    width = indices.shape[1] if indices.ndim == 2 else k
    indices = indices.reshape(-1, width)
    n_genes = int(np.shape(expression)[1])
    out = np.empty((queries.shape[0], n_genes), dtype=np.float32)
    weights = np.empty((queries.shape[0], width), dtype=np.float32)
    spread = np.empty_like(out) if return_neighbour_spread else None
    block = max(1, min(QUERY_BLOCK, GATHER_BLOCK_BYTES // max(1, width * n_genes * 4)))

    def run(start: int) -> None:
        rows = slice(start, start + block)
        idx = indices[rows]
        w = _weights_in_place(queries[rows], np.take(embeddings, idx, axis=0).astype(
            np.float32, copy=False), distance, weighting)
        weights[rows] = w
        neighbours = np.take(expression, idx, axis=0)  # (q, k, G): a copy, the bank is untouched
        out[rows] = np.matmul(w[:, None, :], neighbours)[:, 0, :]
        if spread is not None:
            neighbours -= neighbours[:, :1, :]
            m1 = np.matmul(w[:, None, :], neighbours)[:, 0, :]
            np.square(neighbours, out=neighbours)
            m2 = np.matmul(w[:, None, :], neighbours)[:, 0, :]
            spread[rows] = np.sqrt(np.maximum(m2 - np.square(m1), 0.0))

    starts = range(0, queries.shape[0], block)
    if len(starts) > 1 and _threads() > 1:
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            list(pool.map(run, starts))  # NumPy releases the GIL in take/matmul/reductions
    else:
        for start in starts:
            run(start)
    result = (out, indices, weights)
    return (*result, spread) if spread is not None else result


# ---------------------------------------------------------------------- the bank file
def spot_bank_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(path, SPOT_BANK_FILENAME) if os.path.isdir(path) else path


def read_spot_bank_file(path: str | os.PathLike, framework: str = "numpy") -> dict[str, Any]:
    """The arrays and header of a `spot_bank.safetensors` (folder or file), checked.

    framework "numpy" or "pt" (tensor type of the arrays). Returns embeddings, expression,
    positions (or None), gene_names, section_ids, patient_ids, metadata.
    """
    from safetensors import safe_open

    path = spot_bank_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No spot bank at {path}. Build one with `mclstexp bank build CKPT --dataset ...` "
            "or `model.attach_spot_bank(SpotBank(...))`."
        )
    try:
        with safe_open(path, framework=framework) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several error types
        raise ValueError(f"{path} is not a readable safetensors spot bank: {exc}") from exc
    if header.get("format") != BANK_FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not an mclstexp spot bank "
            f"(its metadata lacks format={BANK_FORMAT})."
        )
    missing = [name for name in ("embeddings", "expression") if name not in tensors]
    if missing or "gene_names" not in header:
        raise ValueError(f"{path}: spot bank lacks {missing or ['gene_names']}; rebuild it with "
                         "`mclstexp bank build`.")
    return {
        "embeddings": tensors["embeddings"],
        "expression": tensors["expression"],
        "positions": tensors.get("positions"),
        "gene_names": json.loads(header["gene_names"]),
        "section_ids": json.loads(header.get("section_ids", "[]")),
        "patient_ids": json.loads(header.get("patient_ids", "[]")),
        "metadata": json.loads(header.get("metadata", "{}")),
    }


def check_bank_arrays(embeddings: np.ndarray, expression: np.ndarray, gene_names: list[str],
                      positions: np.ndarray | None = None, section_ids: list[str] = (),
                      patient_ids: list[str] = ()) -> None:
    """Refuse bank arrays that do not describe one set of spots: shapes, emptiness, NaN/inf."""
    if np.ndim(embeddings) != 2 or np.ndim(expression) != 2:
        raise ValueError(
            "SpotBank: `embeddings` must be (n_spots, dim) and `expression` "
            f"(n_spots, n_genes); got {tuple(np.shape(embeddings))} and "
            f"{tuple(np.shape(expression))}."
        )
    n = int(np.shape(embeddings)[0])
    if n == 0:
        raise ValueError("SpotBank: the bank is empty; build it from at least one spot.")
    if np.shape(expression)[0] != n:
        raise ValueError(
            f"SpotBank: {n} embeddings but {np.shape(expression)[0]} expression rows; "
            "both must describe the same spots in the same order."
        )
    if len(gene_names) != np.shape(expression)[1]:
        raise ValueError(
            f"SpotBank: {len(gene_names)} gene names for "
            f"{np.shape(expression)[1]} expression columns."
        )
    if not np.isfinite(expression).all() or not np.isfinite(embeddings).all():
        raise ValueError("SpotBank: embeddings/expression contain NaN or inf values.")
    if positions is not None and tuple(np.shape(positions)) != (n, 2):
        raise ValueError(
            f"SpotBank: `positions` must be ({n}, 2); got {tuple(np.shape(positions))}."
        )
    for name, values in (("section_ids", section_ids), ("patient_ids", patient_ids)):
        if values and len(values) != n:
            raise ValueError(f"SpotBank: `{name}` has {len(values)} entries for {n} spots.")


def check_bank_serves(bank_genes: list[str], bank_dim: int, gene_names: list[str],
                      embedding_dim: int) -> None:
    """Refuse a bank that cannot serve a model: genes or embedding width differ."""
    model_genes, bank_genes = [str(g) for g in gene_names], [str(g) for g in bank_genes]
    if model_genes != bank_genes:
        first = next((i for i, (m, b) in enumerate(zip(model_genes, bank_genes)) if m != b),
                     min(len(model_genes), len(bank_genes)))
        model_at = model_genes[first] if first < len(model_genes) else "<end>"
        bank_at = bank_genes[first] if first < len(bank_genes) else "<end>"
        raise ValueError(
            "Spot bank genes do not match the model's `gene_names`: model has "
            f"{len(model_genes)} genes, bank has {len(bank_genes)}; first difference "
            f"at position {first}: model {model_at!r}, bank {bank_at!r}. Build the bank "
            "from data preprocessed with the model's gene panel."
        )
    if embedding_dim != bank_dim:
        raise ValueError(
            f"Spot bank embedding width {bank_dim} does not match the model's "
            f"projection_dim {embedding_dim}. Rebuild the bank with this model "
            "(`mclstexp bank build`)."
        )


__all__ = [
    "GATHER_BLOCK_BYTES", "MIN_DISTANCE", "QUERY_BLOCK", "RETRIEVAL_DISTANCES", "RETRIEVAL_WEIGHTINGS",
    "SAVED_INDEX_FILENAME", "SPOT_BANK_FILENAME", "check_bank_arrays", "check_bank_serves", "check_k", "cosine_topk", "neighbour_weights",
    "read_spot_bank_file", "retrieve_arrays", "spot_bank_path",
]
