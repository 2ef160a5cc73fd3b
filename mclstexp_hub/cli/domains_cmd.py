"""`mclstexp domains`: spatial domains of a prediction (PCA → k-means), scored by ARI/NMI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ._options import add_command, add_overwrite_option, add_seed_option


def _domains(args: argparse.Namespace) -> int:
    import anndata as ad

    from mclstexp_hub.analysis.domains import run_domains
    from mclstexp_hub.evaluation.report import write_text_atomic
    from mclstexp_hub.visualization.spatial_maps import plot_cluster_map

    source = Path(args.prediction)
    if args.n_clusters < 2:
        raise ValueError(f"--n-clusters must be an integer >= 2; got {args.n_clusters}.")
    if args.n_pcs < 1:
        raise ValueError(f"--n-pcs must be a positive integer; got {args.n_pcs}.")
    if not source.is_file():
        raise FileNotFoundError(f"prediction not found: {source} (write one with `mclstexp predict`).")
    out_dir = Path(args.out_dir) if args.out_dir else source.parent
    stem = f"{source.stem}_domains"
    outputs = {kind: out_dir / f"{stem}.{kind}" for kind in ("png", "csv", "json")}
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out-dir {out_dir} is a file; choose a folder for the outputs.")
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing} already exist; pass --overwrite or another --out-dir.")
    foreign = [str(p) for p in outputs.values() if p.exists() and not _is_ours(p)]
    if foreign:
        raise FileExistsError(
            f"{foreign} exist and were not written by `mclstexp domains`; --overwrite only "
            "replaces this tool's own outputs. Move them away or choose another --out-dir."
        )
    try:
        adata = ad.read_h5ad(source)
    except Exception as exc:
        raise ValueError(f"{source}: cannot read AnnData ({type(exc).__name__}: {exc}); pass "
                         "a pred.h5ad written by `mclstexp predict`.") from exc
    if "spatial" not in adata.obsm or not adata.uns.get("spatial"):
        raise ValueError(
            f"{source}: no obsm['spatial'] / uns['spatial'] (spot positions and the slide "
            "thumbnail); pass a pred.h5ad written by `mclstexp predict`."
        )
    result = run_domains(adata, args.n_clusters, labels=args.labels, n_pcs=args.n_pcs, seed=args.seed)
    title = f"{args.n_clusters} domains (PCA → k-means)"
    if result.scores:
        title += f"; ARI {result.scores['ari']:.3f}, NMI {result.scores['nmi']:.3f}"
    staged = {kind: path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
              for kind, path in outputs.items()}
    try:
        _write(adata, args, source, result, title, staged, write_text_atomic, plot_cluster_map)
        for kind, path in staged.items():  # all three written: rename them into place
            os.replace(path, outputs[kind])
    finally:
        for path in staged.values():
            if path.exists():
                path.unlink()
    if result.scores:
        print(f"ARI = {result.scores['ari']:.3f}, NMI = {result.scores['nmi']:.3f} over "
              f"{result.scores['n_labelled']} labelled spots ({result.labels_source})")
    for path in outputs.values():
        print(f"wrote {path}")
    return 0


def _is_ours(path: Path) -> bool:
    """An output of an earlier `mclstexp domains` (its JSON names the method; PNG/CSV siblings
    count when that JSON is there)."""
    report = path.with_suffix(".json")
    try:
        payload = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(payload, dict) and "PCA" in str(payload.get("method", ""))


def _write(adata, args, source, result, title, outputs, write_text_atomic, plot_cluster_map) -> None:
    """The PNG map, the CSV table and the JSON report, at the (staged) paths `outputs`."""
    outputs["png"].parent.mkdir(parents=True, exist_ok=True)
    plot_cluster_map(adata, "mclstexp_domain", outputs["png"], title=title)
    table = adata.obs[["mclstexp_domain"]].copy()
    table.insert(0, "spot_id", adata.obs_names.astype(str))
    if "region_label" in adata.obs:
        table["region_label"] = adata.obs["region_label"].astype(str)
    write_text_atomic(table.to_csv(index=False), outputs["csv"])
    report = {
        "prediction": str(source),
        "n_clusters": args.n_clusters,
        "n_pcs": args.n_pcs,
        "seed": args.seed,
        "method": "PCA of predicted expression (centred) → k-means (10 inits)",
        "labels": result.labels_source,
        "scores": result.scores,
        "cluster_sizes": {f"D{c}": int((result.clusters == c).sum())
                          for c in range(args.n_clusters)},
    }
    write_text_atomic(json.dumps(report, indent=2) + "\n", outputs["json"])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "domains",
        "spatial domains of a prediction: PCA → k-means, cluster map, ARI/NMI vs labels",
    )
    p.add_argument("prediction", help="pred.h5ad written by `mclstexp predict`")
    p.add_argument("--n-clusters", type=int, required=True, help="number of domains K")
    p.add_argument("--labels", help="obs column of the prediction, or a CSV/TSV with spot_id + "
                                    "label or pixel_x, pixel_y + label (pathologist regions)")
    p.add_argument("--n-pcs", type=int, default=30, help="principal components (30)")
    add_seed_option(p)
    p.add_argument("--out-dir", help="folder for PNG/CSV/JSON (default: next to the prediction)")
    add_overwrite_option(p, None)
    p.set_defaults(func=_domains)
