"""Retrieval latency, peak memory and recall: exact chunked search vs FAISS, banks 1e3–1e6.

Prints one row per (bank size, method): index build time, search time for all queries,
time of the weighting + average that turns neighbours into expression, peak RSS of the
process and RSS added by the search, and recall@k against exact search.

Synthetic embeddings (this is a systems benchmark, not a quality one): a mixture of 1,000
Gaussian clusters in 256-d, so approximate indexes see cluster structure as with real
embeddings (unstructured Gaussian noise is the worst case for IVF). Each measurement runs in
its own subprocess so that peak RSS (`ru_maxrss`) belongs to that measurement alone.

    .venv/bin/python benchmarks/bench_retrieval.py                       # 1e3..1e6, 1e4 queries
    .venv/bin/python benchmarks/bench_retrieval.py --sizes 1000 100000 --queries 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def synthetic(n: int, n_queries: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank and queries from one distribution (same seed → same data).

    Points are a 32-d Gaussian latent mapped linearly into `dim` dimensions plus isotropic
    noise: low intrinsic dimension like learned embeddings, but no cluster structure that an
    IVF index could match cell for cell (which would make its recall look perfect).
    """
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(32, dim, generator=g) / 32**0.5
    bank = torch.empty(n, dim)
    for start in range(0, n, 262144):  # in blocks: no second full-size temporary
        stop = min(n, start + 262144)
        bank[start:stop] = (torch.randn(stop - start, 32, generator=g) @ mixing
                            + 0.3 * torch.randn(stop - start, dim, generator=g))
    queries = torch.randn(n_queries, 32, generator=g) @ mixing + 0.3 * torch.randn(
        n_queries, dim, generator=g)
    return bank, queries


def worker(cfg: dict) -> list[dict]:
    """One bank size × method (run in a fresh process); one row per search setting."""
    torch.set_num_threads(cfg["threads"])
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    bank_emb, queries = synthetic(cfg["n"], cfg["queries"], cfg["dim"], cfg["seed"])
    n_genes = cfg["genes"]
    expression = torch.rand(cfg["n"], n_genes, generator=torch.Generator().manual_seed(1))
    bank = SpotBank(bank_emb, expression, [f"g{i}" for i in range(n_genes)])
    del bank_emb
    k = min(cfg["k"], cfg["n"])
    rss_before = _status_mib("VmRSS")
    _reset_peak()
    base = {"n": cfg["n"], "method": cfg["method"], "k": k, "queries": cfg["queries"],
            "rss_before_mib": rss_before}
    runs: list[tuple[dict, float, torch.Tensor]] = []  # (params, search seconds, indices)
    build = 0.0
    if cfg["method"] == "exact":
        t1 = time.perf_counter()
        _, idx = bank.search(queries, k, chunk_size=cfg["chunk_size"])
        runs.append(({"chunk_size": cfg["chunk_size"]}, time.perf_counter() - t1, idx))
    else:
        from mclstexp_hub.retrieval import FaissSpotIndex, import_faiss

        import_faiss().omp_set_num_threads(cfg["threads"])
        t0 = time.perf_counter()
        index = FaissSpotIndex.from_bank(bank, cfg["method"], seed=cfg["seed"])
        build = time.perf_counter() - t0
        settings: list[dict] = [{}]
        if cfg["method"] == "ivf":
            nlist = index.params["nlist"]
            settings = [{"nprobe": min(p, nlist)} for p in dict.fromkeys(
                min(p, nlist) for p in cfg["ivf_nprobe"])]
        elif cfg["method"] == "hnsw":
            settings = [{"ef_search": max(e, k)} for e in dict.fromkeys(
                max(e, k) for e in cfg["hnsw_ef"])]
        for setting in settings:
            index.set_search_params(**setting)
            t1 = time.perf_counter()
            try:
                _, idx = index.search(queries, k)
            except ValueError as exc:  # too few candidates at this setting
                runs.append(({**index.params, "error": str(exc)[:80]}, float("nan"), None))
                continue
            params = {p: v for p, v in index.params.items() if p != "metric"}
            runs.append((params, time.perf_counter() - t1, idx))
    peak_search = _status_mib("VmHWM")
    rows = []
    for j, (params, seconds, idx) in enumerate(runs):
        row = {**base, "params": params, "build_s": build, "search_s": seconds,
               "peak_rss_search_mib": peak_search, "search_added_mib": peak_search - rss_before}
        if idx is not None:
            path = f"{cfg['indices_out']}.{j}.npy"
            np.save(path, idx.numpy())
            row["indices_path"] = path
        rows.append(row)
    # Neighbours → weights → expression through the bank's one retrieval loop (bounded query
    # blocks). Its cost does not depend on how the neighbours were found: measured with exact.
    idx = next((r[2] for r in runs if r[2] is not None), None)
    if idx is not None and cfg["method"] == "exact":
        t2 = time.perf_counter()
        bank.retrieve(queries, k, "l1", "inverse_square", indices=idx)
        weighting = time.perf_counter() - t2
        peak = _status_mib("VmHWM")
        for row in rows:
            row.update(weighting_s=weighting, peak_rss_mib=peak)
    return rows


def run_in_subprocess(cfg: dict) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg['method']} n={cfg['n']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The benchmark runner's machine description, so every results file names it alike."""
    from mclstexp_hub.benchmark.runner import machine_description

    return machine_description()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--genes", type=int, default=785)
    ap.add_argument("--methods", nargs="+", default=["exact", "flat", "ivf", "hnsw"])
    ap.add_argument("--hnsw-max", type=float, default=1e5,
                    help="skip hnsw above this bank size (its build is minutes at 1e6 on 2 cores)")
    ap.add_argument("--ivf-nprobe", type=int, nargs="+", default=[16, 64],
                    help="IVF cells scanned per query (one row each)")
    ap.add_argument("--hnsw-ef", type=int, nargs="+", default=[256],
                    help="HNSW search beam (raised to k when smaller)")
    ap.add_argument("--chunk-size", type=int, default=65536, help="exact search bank chunk")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write all rows to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    print(f"machine: {machine()}")
    print(f"queries {args.queries}, dim {args.dim}, k {args.k}, threads {args.threads}, "
          "synthetic 32-d latent + noise in 256-d; weighting = L1 1/d^2 over the k neighbours")
    print(f"{'bank':>9} {'method':>6} {'build s':>8} {'search s':>9} {'queries/s':>10} "
          f"{'weight s':>8} {'RSS0 MiB':>8} {'+search':>8} {'+weight':>8} {'recall@k':>8}  params")
    rows = []
    from mclstexp_hub.retrieval import recall_at_k

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n = int(size)
            exact_idx = None
            for method in args.methods:
                if method == "hnsw" and n > args.hnsw_max:
                    print(f"{n:>9} {method:>6}  skipped (bank > --hnsw-max {int(args.hnsw_max)})")
                    continue
                cfg = {"n": n, "method": method, "queries": args.queries, "dim": args.dim,
                       "k": args.k, "genes": args.genes, "chunk_size": args.chunk_size,
                       "threads": args.threads, "seed": args.seed,
                       "ivf_nprobe": args.ivf_nprobe, "hnsw_ef": args.hnsw_ef,
                       "indices_out": os.path.join(tmp, f"{method}_{n}")}
                for row in run_in_subprocess(cfg):
                    path = row.pop("indices_path", None)
                    found = np.load(path) if path else None
                    if method == "exact":
                        exact_idx = found
                    row["recall_at_k"] = (
                        recall_at_k(exact_idx, found)
                        if found is not None and exact_idx is not None else None
                    )
                    rows.append(row)
                    recall = "-" if row["recall_at_k"] is None else f"{row['recall_at_k']:.4f}"
                    qps = row["queries"] / row["search_s"] if row["search_s"] == row["search_s"] else float("nan")
                    print(f"{n:>9} {method:>6} {row['build_s']:>8.2f} {row['search_s']:>9.2f} "
                          f"{qps:>10.0f} {row.get('weighting_s', float('nan')):>8.2f} "
                          f"{row['rss_before_mib']:>8.0f} {row['search_added_mib']:>8.0f} "
                          f"{row.get('peak_rss_mib', float('nan')) - row['rss_before_mib']:>8.0f} "
                          f"{recall:>8}  "
                          f"{row['params']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
