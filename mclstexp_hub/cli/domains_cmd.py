"""`mclstexp domains`: spatial domains of a prediction (PCA → k-means), scored by ARI/NMI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._options import add_command, add_overwrite_option, add_seed_option


def _domains(args: argparse.Namespace) -> int:
    import anndata as ad

    from mclstexp_hub.analysis.domains import run_domains
    from mclstexp_hub.evaluation.report import write_text_atomic
    from mclstexp_hub.visualization.spatial_maps import plot_cluster_map

    source = Path(args.prediction)
    if not source.is_file():
        raise FileNotFoundError(f"prediction not found: {source} (write one with `mclstexp predict`).")
    out_dir = Path(args.out_dir) if args.out_dir else source.parent
    stem = f"{source.stem}_domains"
    outputs = {kind: out_dir / f"{stem}.{kind}" for kind in ("png", "csv", "json")}
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing} already exist; pass --overwrite or another --out-dir.")
    try:
        adata = ad.read_h5ad(source)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{source}: cannot read AnnData ({exc}).") from exc
    result = run_domains(adata, args.n_clusters, labels=args.labels, n_pcs=args.n_pcs, seed=args.seed)
    title = f"{args.n_clusters} domains (PCA → k-means)"
    if result.scores:
        title += f"; ARI {result.scores['ari']:.3f}, NMI {result.scores['nmi']:.3f}"
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
    if result.scores:
        print(f"ARI = {result.scores['ari']:.3f}, NMI = {result.scores['nmi']:.3f} over "
              f"{result.scores['n_labelled']} labelled spots ({result.labels_source})")
    for path in outputs.values():
        print(f"wrote {path}")
    return 0


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
