"""Exact search for banks that stay fast, a tuned FAISS IVF index above: `build_searcher`.

Exact chunked cosine search (`SpotBank.search`) costs O(Q · N · D): fine for the banks a few
HER2+/ST cohorts give (10⁴–10⁵ spots), too slow for million-spot banks. `build_searcher`
keeps exact search up to `EXACT_MAX_SPOTS` and builds an IVF index above it whose `nprobe`
is tuned *on the bank itself*: ~1,000 bank rows, each perturbed by Gaussian noise of norm
`probe_noise` × its distance to its nearest other bank row, serve as probe queries; their
exact top-k is computed once, and nprobe is raised until recall@k ≥ `target_recall` (a
query whose scanned cells hold fewer than k spots is re-searched with more cells). The
report (kind, nlist, nprobe, measured recall, probe count, build seconds, a fingerprint of
the bank embeddings) is saved next to the bank (`spot_bank_index.json`, index in
`spot_bank.faiss`); `load_searcher` refuses an index whose bank has changed (warning, exact
search instead).

EXACT_MAX_SPOTS, from measurement (`benchmarks/bench_retrieval.py`, 10,000 queries, k=200,
256-d, 2 threads, this 2-core AMD EPYC machine; benchmarks/results/retrieval/results.md).
Exact search cost does not depend on the data, only on N and on how busy the machine is:

    bank      exact s (load ~2)   exact s (load ~7)   flat s (load ~2)
    10,000          1.1                 5.2                0.7
    100,000         8.5                28.7                4.3
    1,000,000        -                168.3               52.0

so exact search of 10,000 queries stays within the 10 s budget up to 10⁵ spots (8.5 s) on
this machine when it is not oversubscribed, and not at 10⁶ (168 s). Below 10⁵ an IVF index
does not pay: on unclustered embeddings it needed nprobe 103/316 at 10⁵ spots for recall
0.95 and was slower than exact (16 s). EXACT_MAX_SPOTS = 100,000; above it the tuned IVF
index answered 10,000 queries against 10⁶ clustered spots (real HER2+ spot-tower embeddings
+ noise) in 1.7 s at recall@200 0.974 (build-time recall 0.969, nprobe 1 of 1,000 cells).

Recall is measured on perturbed bank rows, a proxy for image queries: image embeddings that
lie farther from every bank spot than the probes do will see a somewhat different recall.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from mclstexp_hub.models.mclstexp.retrieval_mclstexp import SAVED_INDEX_FILENAME
from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

from .faiss_index import FaissSpotIndex, _normalised, import_faiss, recall_at_k

EXACT_MAX_SPOTS = 100_000
INDEX_FILENAME = SAVED_INDEX_FILENAME
REPORT_FILENAME = "spot_bank_index.json"
REPORT_FORMAT = "mclstexp-spot-bank-index"
DEFAULT_PROBES = 1000
DEFAULT_PROBE_NOISE = 0.5
INDEX_CHOICES = ("auto", "exact", "ivf")


def bank_fingerprint(embeddings: Any) -> str:
    """sha256 of the bank embeddings (float32 bytes) and their shape."""
    t = torch.as_tensor(embeddings, dtype=torch.float32).contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}".encode())
    h.update(memoryview(t.numpy()).cast("B"))
    return "sha256:" + h.hexdigest()


def _exact_knn(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k indices (FAISS brute force, no copy of the base)."""
    faiss = import_faiss()
    _, idx = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return idx


def probe_queries(x: np.ndarray, n_probes: int, noise: float, seed: int) -> np.ndarray:
    """`n_probes` bank rows (unit vectors) + Gaussian noise of norm `noise` × the row's
    distance to its nearest other bank row, renormalised."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    rows = np.sort(rng.choice(n, size=min(n_probes, n), replace=False))
    base = x[rows]
    nn = _exact_knn(base, x, min(2, n))
    # nearest *other* row (the row itself is usually first; duplicates give distance 0)
    other = np.where(nn[:, 0] == rows, nn[:, -1], nn[:, 0])
    d_nn = np.linalg.norm(base - x[other], axis=1)
    d_nn = np.where(d_nn > 0, d_nn, np.median(d_nn[d_nn > 0]) if (d_nn > 0).any() else 1e-3)
    direction = rng.standard_normal((len(rows), dim)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    q = base + (noise * d_nn)[:, None].astype(np.float32) * direction
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q, dtype=np.float32)


def tune_nprobe(index: FaissSpotIndex, probes: np.ndarray, exact: np.ndarray, k: int,
                target: float) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest nprobe (doubling, then bisection) with recall@k ≥ target on the probes."""
    nlist = int(index.params["nlist"])
    tried: dict[int, float] = {}

    def recall(p: int) -> float:
        if p not in tried:
            index.set_search_params(nprobe=p)
            _, idx = index.search(probes, k)  # as served: short rows widened
            tried[p] = recall_at_k(exact, idx.numpy())
        return tried[p]

    lo, hi = 0, 1  # recall(lo) < target (lo = 0: nothing scanned)
    while recall(hi) < target and hi < nlist:
        lo, hi = hi, min(2 * hi, nlist)
    if recall(hi) >= target:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if recall(mid) >= target:
                hi = mid
            else:
                lo = mid
    best = min((p for p, r in tried.items() if r >= target), default=nlist)
    recall(best)
    index.set_search_params(nprobe=best)
    return best, tried[best], sorted(tried.items())


def build_searcher(
    bank: SpotBank,
    k: int,
    *,
    target_recall: float = 0.95,
    seed: int = 0,
    kind: str = "auto",
    n_probes: int = DEFAULT_PROBES,
    probe_noise: float = DEFAULT_PROBE_NOISE,
    nlist: int | None = None,
    threads: int | None = None,
) -> tuple[FaissSpotIndex | None, dict[str, Any]]:
    """(searcher or None for exact search, report).

    kind "auto": exact at or below `EXACT_MAX_SPOTS` spots, IVF above; "exact" / "ivf" force
    one. The IVF's nprobe is the smallest reaching `target_recall` on probe queries made from
    the bank (see the module docstring); the report records what was measured.
    """
    if kind not in INDEX_CHOICES:
        raise ValueError(f"index kind must be one of {INDEX_CHOICES}; got {kind!r}.")
    n, dim = len(bank), bank.embedding_dim
    if not isinstance(k, int) or k < 1 or k > n:
        raise ValueError(f"k must be an integer in [1, {n}] (bank size); got {k!r}.")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "n_spots": n, "dim": dim, "k": k,
        "exact_max_spots": EXACT_MAX_SPOTS, "requested": kind,
    }
    if kind == "exact" or (kind == "auto" and n <= EXACT_MAX_SPOTS):
        report.update(kind="exact", recall_at_k=1.0,
                      reason=("requested" if kind == "exact"
                              else f"bank of {n} spots <= EXACT_MAX_SPOTS={EXACT_MAX_SPOTS}"))
        return None, report
    faiss = import_faiss()
    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    t0 = time.perf_counter()
    index = FaissSpotIndex.from_bank(bank, "ivf", nlist=nlist, seed=seed)
    index.widen_short_rows = True  # a query whose cells hold < k spots scans more cells
    t_index = time.perf_counter() - t0
    x = _normalised(bank.embeddings, "bank embeddings")
    t1 = time.perf_counter()
    probes = probe_queries(x, n_probes, probe_noise, seed)
    exact = _exact_knn(probes, x, k)
    t_exact = time.perf_counter() - t1
    nprobe, recall, curve = tune_nprobe(index, probes, exact, k, target_recall)
    build_s = time.perf_counter() - t0
    report.update(
        kind="ivf", nlist=int(index.params["nlist"]), nprobe=int(nprobe),
        train_size=int(index.params["train_size"]), recall_at_k=float(recall),
        target_recall=float(target_recall), recall_met=bool(recall >= target_recall),
        n_probes=len(probes), probe_noise=float(probe_noise),
        probe_queries=("bank rows + Gaussian noise of norm probe_noise x distance to the "
                       "nearest other bank row, renormalised"),
        nprobe_curve=[[int(p), float(r)] for p, r in curve], seed=int(seed),
        index_build_s=round(t_index, 3), probe_exact_s=round(t_exact, 3),
        build_s=round(build_s, 3), bank_fingerprint=bank_fingerprint(bank.embeddings),
        faiss_version=getattr(faiss, "__version__", "?"),
    )
    if recall < target_recall:
        warnings.warn(f"IVF recall@{k} {recall:.4f} stays below the target {target_recall} "
                      f"even at nprobe={nprobe}", stacklevel=2)
    return index, report


def save_searcher(folder: str | os.PathLike, searcher: FaissSpotIndex | None,
                  report: dict[str, Any]) -> list[str]:
    """Write `spot_bank.faiss` + `spot_bank_index.json` into `folder` (exact: remove both,
    so no stale index outlives a rebuilt bank). Returns the paths written."""
    folder = os.fspath(folder)
    index_path = os.path.join(folder, INDEX_FILENAME)
    report_path = os.path.join(folder, REPORT_FILENAME)
    if searcher is None:
        for path in (index_path, report_path):
            if os.path.exists(path):
                os.remove(path)
        return []
    searcher.save(index_path)
    tmp = f"{report_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, report_path)
    return [index_path, report_path]


def load_searcher(folder: str | os.PathLike, bank: SpotBank | None = None,
                  ) -> tuple[FaissSpotIndex | None, dict[str, Any] | None]:
    """(index, report) saved by `save_searcher`, or (None, None) when absent or stale.

    With `bank`, the index must match it (spot count, width, and the embeddings' fingerprint
    recorded at build time); otherwise it is ignored with a warning (exact search)."""
    folder = os.fspath(folder)
    index_path = os.path.join(folder, INDEX_FILENAME)
    report_path = os.path.join(folder, REPORT_FILENAME)
    if not os.path.isfile(index_path) or not os.path.isfile(report_path):
        return None, None
    try:
        with open(report_path) as f:
            report = json.load(f)
        if report.get("format") != REPORT_FORMAT:
            raise ValueError("not an mclstexp spot-bank index report")
        index = FaissSpotIndex.load(index_path)
    except (OSError, RuntimeError, ValueError, ImportError) as exc:  # exact is always right
        warnings.warn(f"ignoring the spot-bank index in {folder} ({exc}); using exact search",
                      stacklevel=2)
        return None, None
    if bank is not None:
        problems = []
        if len(index) != len(bank) or report.get("n_spots") != len(bank):
            problems.append(f"index has {len(index)} spots, bank {len(bank)}")
        if index.dim != bank.embedding_dim or report.get("dim") != bank.embedding_dim:
            problems.append(f"index width {index.dim}, bank {bank.embedding_dim}")
        if not problems and report.get("bank_fingerprint") != bank_fingerprint(bank.embeddings):
            problems.append("the bank embeddings changed since the index was built")
        if problems:
            warnings.warn(f"ignoring the stale spot-bank index in {folder}: "
                          f"{'; '.join(problems)}. Using exact search; rebuild it with "
                          "`mclstexp bank build --index ivf`.", stacklevel=2)
            return None, None
    if "nprobe" in report and index.kind == "ivf":
        index.set_search_params(nprobe=int(report["nprobe"]))
        index.widen_short_rows = True
    return index, report


def attach_saved_searcher(model: Any, folder: str | os.PathLike) -> dict[str, Any]:
    """Set `model.spot_searcher` from an index saved in `folder` when present and valid;
    returns the provenance record (search kind and build-time recall)."""
    bank = getattr(model, "spot_bank", None)
    searcher, report = (None, None)
    if bank is not None and os.path.isdir(os.fspath(folder)):
        try:
            searcher, report = load_searcher(folder, bank)
        except ImportError as exc:  # faiss missing: exact search still answers
            warnings.warn(f"spot-bank index not used ({exc}); using exact search", stacklevel=2)
    if searcher is None:
        return {"retrieval_search": "exact"}
    model.spot_searcher = searcher
    return {"retrieval_search": f"faiss {report['kind']} (nlist {report.get('nlist')}, "
                                f"nprobe {report.get('nprobe')})",
            "retrieval_index_recall_at_k": report.get("recall_at_k"),
            "retrieval_index_k": report.get("k"),
            "retrieval_index_n_probes": report.get("n_probes")}


__all__ = ["EXACT_MAX_SPOTS", "INDEX_CHOICES", "INDEX_FILENAME", "REPORT_FILENAME",
           "attach_saved_searcher", "bank_fingerprint", "build_searcher", "load_searcher",
           "probe_queries", "save_searcher", "tune_nprobe"]
