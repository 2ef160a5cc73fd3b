"""Retrieval latency, peak memory and recall: exact chunked search vs FAISS, banks 1e3–1e6.

Prints one row per (bank size, method): index build time, search time for all queries,
time of the weighting + average that turns neighbours into expression, peak RSS of the
process and RSS added by the search, and recall@k against exact search.

Two kinds of embeddings (`--data`):

- ``clustered``: *real* bank embeddings — the spot tower of a random-init `MclSTExpModel`
  applied to the preprocessed 785-gene expression of four real HER2+ sections — replicated to
  the bank size by adding Gaussian noise of norm `--noise-frac` × the median nearest-neighbour
  distance of the real embeddings; queries are other perturbations of the same real spots.
  Real banks are clustered like this (by tissue type), which is what IVF indexes exploit.
- ``synthetic``: unclustered, a 32-d Gaussian latent mapped into 256-d plus noise (the hard
  case for IVF).

Methods: ``exact`` (SpotBank.search), ``flat`` / ``ivf`` / ``hnsw`` (FaissSpotIndex) and
``auto`` (`mclstexp_hub.retrieval.auto.build_searcher`: exact up to EXACT_MAX_SPOTS, above it
IVF with nprobe tuned on the bank to recall@k >= 0.95; its build-time recall is in `params`).
The ``retrieve()`` step (neighbours -> weights -> expression, bounded query blocks) is timed
in the auto rows (its cost does not depend on how neighbours were found), with its own
peak-RSS increase (`+weight`). Each measurement runs in its
own subprocess so that peak RSS belongs to that measurement alone.

    .venv/bin/python benchmarks/bench_retrieval.py                       # 1e3..1e6, 1e4 queries
    .venv/bin/python benchmarks/bench_retrieval.py --sizes 1000 100000 --queries 2000
    nice -n 10 .venv/bin/python benchmarks/bench_retrieval.py --data clustered synthetic \
        --sizes 1e4 5e4 1e5 1e6 --methods exact flat auto \
        --out-dir benchmarks/results/retrieval          # the committed results
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


DEFAULT_HER2ST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
HER2ST_SECTIONS = ("A1", "B1", "C1", "D1")


def real_spot_embeddings(data_root: str, sections: list[str], seed: int, out: str) -> dict:
    """Spot-tower embeddings of real HER2+ expression (random-init tower), saved to `out`.

    Counts are read with the HER2+ reader and preprocessed to the 785-gene panel (no patches
    needed: the spot tower sees only expression and array positions)."""
    from mclstexp_hub.data.preprocess import preprocess_sections, read_gene_panel
    from mclstexp_hub.data.readers.her2st import read_her2st_section
    from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel

    panel = read_gene_panel(os.path.join(data_root, "gene_lists", "her2st_785.txt"))
    adatas = [read_her2st_section(os.path.join(data_root, "her2st"), s) for s in sections]
    pre = preprocess_sections(adatas, genes=panel, fill_missing=True)
    expr = np.concatenate([np.asarray(a.X, dtype=np.float32) for a in pre])
    pos = np.concatenate([a.obs[["array_x", "array_y"]].to_numpy(np.int64) for a in pre])
    torch.manual_seed(seed)
    model = MclSTExpModel(MclSTExpConfig(gene_names=panel, image_encoder="resnet10t")).eval()
    emb = model.build_spot_bank(torch.from_numpy(expr), torch.from_numpy(pos),
                                attach=False).embeddings.numpy()
    np.savez(out, embeddings=emb, expression=expr)
    d = torch.cdist(torch.from_numpy(emb), torch.from_numpy(emb))
    d.fill_diagonal_(float("inf"))
    return {"path": out, "n_real": int(emb.shape[0]), "sections": list(sections),
            "dim": int(emb.shape[1]), "median_nn_dist": float(d.min(1).values.median()),
            "median_norm": float(np.median(np.linalg.norm(emb, axis=1)))}


def clustered(n: int, n_queries: int, seed: int, real: dict, noise_frac: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank = real embeddings replicated to n rows + Gaussian noise (norm ≈ noise_frac ×
    median NN distance); queries = other perturbations; expression = the real spot's."""
    data = np.load(real["path"])
    base = torch.from_numpy(data["embeddings"])
    expr = torch.from_numpy(data["expression"])
    m, dim = base.shape
    sigma = noise_frac * real["median_nn_dist"] / dim**0.5
    g = torch.Generator().manual_seed(seed)
    bank = torch.empty(n, dim)
    src = torch.arange(n) % m
    for start in range(0, n, 262144):
        stop = min(n, start + 262144)
        bank[start:stop] = base[src[start:stop]] + sigma * torch.randn(stop - start, dim, generator=g)
    q_src = torch.randint(0, m, (n_queries,), generator=g)
    queries = base[q_src] + sigma * torch.randn(n_queries, dim, generator=g)
    return bank, queries, expr[src]


def worker(cfg: dict) -> list[dict]:
    """One bank size × method (run in a fresh process); one row per search setting."""
    torch.set_num_threads(cfg["threads"])
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    if cfg["data"] == "clustered":
        bank_emb, queries, expression = clustered(cfg["n"], cfg["queries"], cfg["seed"],
                                                  cfg["real"], cfg["noise_frac"])
    else:
        bank_emb, queries = synthetic(cfg["n"], cfg["queries"], cfg["dim"], cfg["seed"])
        expression = torch.rand(cfg["n"], cfg["genes"], generator=torch.Generator().manual_seed(1))
    n_genes = expression.shape[1]
    bank = SpotBank(bank_emb, expression, [f"g{i}" for i in range(n_genes)])
    del bank_emb, expression
    k = min(cfg["k"], cfg["n"])
    rss_before = _status_mib("VmRSS")
    _reset_peak()
    base = {"data": cfg["data"], "n": cfg["n"], "method": cfg["method"], "k": k,
            "queries": cfg["queries"], "threads": cfg["threads"], "rss_before_mib": rss_before}
    runs: list[tuple[dict, float, torch.Tensor]] = []  # (params, search seconds, indices)
    build = 0.0
    searcher = None
    if cfg["method"] == "exact":
        t1 = time.perf_counter()
        _, idx = bank.search(queries, k, chunk_size=cfg["chunk_size"])
        runs.append(({"chunk_size": cfg["chunk_size"]}, time.perf_counter() - t1, idx))
    elif cfg["method"] == "auto":
        from mclstexp_hub.retrieval import import_faiss
        from mclstexp_hub.retrieval.auto import build_searcher

        import_faiss().omp_set_num_threads(cfg["threads"])
        t0 = time.perf_counter()
        searcher, report = build_searcher(bank, k, target_recall=cfg["target_recall"],
                                          seed=cfg["seed"])
        build = time.perf_counter() - t0
        params = {p: report[p] for p in ("kind", "nlist", "nprobe", "recall_at_k", "n_probes",
                                         "exact_max_spots") if p in report}
        params["build_recall"] = params.pop("recall_at_k")
        t1 = time.perf_counter()
        if searcher is None:
            _, idx = bank.search(queries, k, chunk_size=cfg["chunk_size"])
        else:
            _, idx = searcher.search(queries, k)
        runs.append((params, time.perf_counter() - t1, idx))
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
    # blocks). Its cost does not depend on how the neighbours were found: measured for exact
    # and auto, with the peak counter reset so `weighting_added_mib` is this step's alone.
    idx = next((r[2] for r in runs if r[2] is not None), None)
    if idx is not None and cfg["method"] == "auto" and cfg.get("weighting", True):
        del runs
        rss_w = _status_mib("VmRSS")
        _reset_peak()
        t2 = time.perf_counter()
        expr_out, _, _ = bank.retrieve(queries, k, "l1", "inverse_square", indices=idx)
        weighting = time.perf_counter() - t2
        peak = _status_mib("VmHWM")
        gather_gib = idx.numel() * bank.n_genes * 4 / 2**30
        for row in rows:
            row.update(weighting_s=weighting, peak_rss_mib=max(peak, peak_search),
                       weighting_added_mib=peak - rss_w,
                       unbounded_gather_gib=gather_gib)
        del expr_out
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
    ap.add_argument("--methods", nargs="+", default=["exact", "flat", "ivf", "hnsw"],
                    choices=["exact", "flat", "ivf", "hnsw", "auto"])
    ap.add_argument("--data", nargs="+", default=["synthetic"], choices=["clustered", "synthetic"],
                    help="clustered: real HER2+ spot-tower embeddings + noise; synthetic: unclustered")
    ap.add_argument("--data-root", default=DEFAULT_HER2ST,
                    help="folder with her2st/ and gene_lists/ (for --data clustered)")
    ap.add_argument("--sections", nargs="+", default=list(HER2ST_SECTIONS))
    ap.add_argument("--noise-frac", type=float, default=0.5,
                    help="clustered: noise norm as a fraction of the median NN distance")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--skip", nargs="*", default=[], metavar="METHOD:DATA:N",
                    help="skip these measurements (e.g. exact:synthetic:1000000); recall is "
                    "then measured against flat, which is exact too")
    ap.add_argument("--weighting-sizes", type=float, nargs="*", default=None,
                    help="time retrieve()'s weighting/gather in the auto rows only at these "
                    "bank sizes (default: all)")
    ap.add_argument("--out-dir", default=None,
                    help="write results.json and results.md (the printed table) here")
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

    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    out(f"machine: {machine()}")
    out(f"queries {args.queries}, dim {args.dim}, k {args.k}, threads {args.threads}; "
        "weighting = L1 1/d^2 over the k neighbours")
    rows = []
    real = None
    from mclstexp_hub.retrieval import recall_at_k

    with tempfile.TemporaryDirectory() as tmp:
      for data in args.data:
        if data == "clustered":
            t0 = time.perf_counter()
            real = real_spot_embeddings(args.data_root, args.sections, args.seed,
                                        os.path.join(tmp, "real.npz"))
            out(f"\nclustered: {real['n_real']} real HER2+ spots ({', '.join(real['sections'])}) "
                f"through a random-init spot tower ({real['dim']}-d, median norm "
                f"{real['median_norm']:.3g}, median NN distance {real['median_nn_dist']:.3g}), "
                f"replicated + Gaussian noise of norm {args.noise_frac} x NN distance "
                f"[{time.perf_counter() - t0:.0f} s]")
        else:
            out("\nsynthetic (unclustered): 32-d Gaussian latent + noise in 256-d")
        out(f"{'bank':>9} {'method':>6} {'build s':>8} {'search s':>9} {'queries/s':>10} "
            f"{'weight s':>8} {'RSS0 MiB':>8} {'+search':>8} {'+weight':>8} {'recall@k':>8}  params")
        for size in args.sizes:
            n = int(size)
            exact_idx = None
            ref_flat = False
            for method in args.methods:
                if f"{method}:{data}:{n}" in args.skip:
                    out(f"{n:>9} {method:>6}  skipped (--skip)")
                    continue
                if method == "hnsw" and n > args.hnsw_max:
                    out(f"{n:>9} {method:>6}  skipped (bank > --hnsw-max {int(args.hnsw_max)})")
                    continue
                cfg = {"n": n, "method": method, "queries": args.queries, "dim": args.dim,
                       "k": args.k, "genes": args.genes, "chunk_size": args.chunk_size,
                       "threads": args.threads, "seed": args.seed,
                       "ivf_nprobe": args.ivf_nprobe, "hnsw_ef": args.hnsw_ef,
                       "data": data, "real": real, "noise_frac": args.noise_frac,
                       "target_recall": args.target_recall,
                       "weighting": args.weighting_sizes is None
                       or n in {int(x) for x in args.weighting_sizes},
                       "indices_out": os.path.join(tmp, f"{data}_{method}_{n}")}
                for row in run_in_subprocess(cfg):
                    path = row.pop("indices_path", None)
                    found = np.load(path) if path else None
                    is_reference = method == "exact" or (method == "flat" and exact_idx is None)
                    if is_reference:
                        exact_idx = found  # flat is exact too (used when exact is skipped)
                    row["recall_at_k"] = (
                        recall_at_k(exact_idx, found)
                        if found is not None and exact_idx is not None
                        and not (is_reference and method == "flat") else None
                    )
                    row["recall_reference"] = "flat" if ref_flat or (
                        is_reference and method == "flat") else "exact"
                    ref_flat = ref_flat or (is_reference and method == "flat")
                    rows.append(row)
                    recall = "-" if row["recall_at_k"] is None else f"{row['recall_at_k']:.4f}"
                    qps = row["queries"] / row["search_s"] if row["search_s"] == row["search_s"] else float("nan")
                    out(f"{n:>9} {method:>6} {row['build_s']:>8.2f} {row['search_s']:>9.2f} "
                        f"{qps:>10.0f} {row.get('weighting_s', float('nan')):>8.2f} "
                        f"{row['rss_before_mib']:>8.0f} {row['search_added_mib']:>8.0f} "
                        f"{row.get('weighting_added_mib', float('nan')):>8.0f} "
                        f"{recall:>8}  {row['params']}")
    out("\n+search / +weight: peak RSS added (MiB) by the search / by retrieve()'s weighting "
        "and gather (bounded query blocks; an unbounded (Q, k, G) gather would be "
        + (f"{rows[-1].get('unbounded_gather_gib', float('nan')):.1f} GiB)" if rows else "?)"))
    result = {"machine": machine(), "args": vars(args), "real": real, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            json.dump(result, f, indent=2)
        argv_str = " ".join(sys.argv[1:] if argv is None else argv)
        with open(os.path.join(args.out_dir, "results.md"), "w") as f:
            f.write("# Retrieval at scale: exact vs FAISS vs auto (tuned IVF)\n\n"
                    f"Command:\n\n    nice -n 10 .venv/bin/python benchmarks/bench_retrieval.py "
                    f"{argv_str}\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
