"""Time and peak memory of building the four imaged HER2+ sections into a patch dataset.

    .venv/bin/python benchmarks/bench_data_build.py [--data-dir ../shared/data/her2st]

    .venv/bin/python benchmarks/bench_data_build.py --panel-overlap

``--panel-overlap`` instead measures how far the written gene recipe (GUIDE.md) is from the
published 785-gene HER2+ panel: Jaccard overlap over the 32 evaluation sections (A2–G3), per
scanpy HVG flavour, with per-section HVGs united and with HVGs of the pooled sections.

Reads ../shared/data in place; exits with a message when it is absent. Peak memory is the
process's maximum resident set size (``ru_maxrss``), which includes the Python runtime and the
imported libraries; the build writes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".." / "shared" / "data" / "her2st"))
    parser.add_argument(
        "--genes", default=str(ROOT / ".." / "shared" / "data" / "gene_lists" / "her2st_785.txt")
    )
    parser.add_argument("--sections", nargs="+", default=["B4", "C2", "C3", "C4"])
    parser.add_argument("--panel-overlap", action="store_true", help="measure recipe vs panel")
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "ST-cnts").is_dir():
        print(f"skipped: HER2+ data not found at {data_dir} (see ../shared/data/README.md)")
        return 0

    if args.panel_overlap:
        return panel_overlap(data_dir, Path(args.genes))

    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = build_dataset(
            "her2st",
            data_dir,
            Path(tmp) / "her2st",
            sections=args.sections,
            genes_file=args.genes,
            progress=False,
        )
        elapsed = time.perf_counter() - start
        meta = load_dataset_metadata(out)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = sum(meta["n_spots"].values())
    print(f"machine: {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}")
    print(f"sections: {' '.join(meta['sections'])}; spots: {n}; genes: {len(meta['gene_names'])}")
    print(f"build time: {elapsed:.1f} s ({n / elapsed:.0f} spots/s)")
    print(f"peak RSS: {peak:.0f} MiB (after imports: {rss_before:.0f} MiB)")
    print(f"dataset size on disk: {size:.1f} MiB")
    return 0


def panel_overlap(data_dir: Path, genes_file: Path) -> int:
    """Print the Jaccard overlap of recipe-selected genes with the published panel."""
    import anndata as ad

    from mclstexp_hub.data.preprocess import (
        expressing_spots,
        read_gene_panel,
        section_hvgs,
        select_genes,
        shared_genes,
    )
    from mclstexp_hub.data.readers.her2st import list_her2st_sections, read_her2st

    published = set(read_gene_panel(genes_file))
    names = list_her2st_sections(data_dir)
    names = names[names.index("A2") : names.index("G3") + 1]
    adatas = read_her2st(data_dir, names)
    shared = shared_genes(adatas)
    pooled = ad.concat([a[:, shared] for a in adatas], join="inner")
    n_expr = dict(zip(shared, expressing_spots(adatas, shared), strict=True))
    print(
        f"{len(names)} sections ({names[0]}–{names[-1]}), {len(shared)} shared genes, "
        f"published panel {len(published)} genes"
    )
    for flavor in ("seurat", "cell_ranger"):
        mine = set(select_genes(adatas, n_top=1000, min_spots=1000, flavor=flavor))
        pooled_hvg = section_hvgs(pooled, shared, 1000, flavor)
        pooled_sel = {g for g in pooled_hvg if n_expr[g] >= 1000}
        for how, sel in (("per-section union", mine), ("pooled", pooled_sel)):
            jac = len(sel & published) / len(sel | published)
            print(
                f"{flavor:12s} {how:18s}: {len(sel):4d} genes, "
                f"{len(sel & published):3d} in panel, Jaccard {jac:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
