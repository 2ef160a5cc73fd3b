"""Writing evaluation results: metric JSON/CSV, per-gene r tables and figures, atomically.

Every file is written to a temporary name in the same folder and renamed into place, so a
reader (e.g. `mclstexp card RESULTS_DIR`) never sees a half-written result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .metrics import SCALAR_METRICS, SectionMetrics, average_metrics
from .plots import plot_gene_maps, plot_r_distribution


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not defined"
    if isinstance(value, Path):
        return str(value)
    return value


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """JSON with NaN/inf written as null (strict JSON readers reject NaN)."""
    return write_text_atomic(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n", path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    return write_text_atomic(frame.to_csv(index=False), path)


def metrics_table(results: Sequence[SectionMetrics]) -> pd.DataFrame:
    """One row per section plus a `mean` row, columns = scalar metrics."""
    rows = [{k: v for k, v in r.summary().items() if not isinstance(v, list)} for r in results]
    mean = average_metrics(results)
    rows.append({"section": "mean", **{k: mean[k] for k in SCALAR_METRICS},
                 "n_nan_genes": mean["n_nan_genes"],
                 "n_spots": int(sum(r.n_spots for r in results)),
                 "n_genes": results[0].n_genes if results else 0})
    return pd.DataFrame(rows)


def per_gene_table(results: Sequence[SectionMetrics]) -> pd.DataFrame:
    """Long table: section, gene, r, p, observed mean/var, per-gene MSE/MAE, HEG/HVG flags."""
    frames = [r.per_gene.assign(section=r.section) for r in results]
    table = pd.concat(frames, ignore_index=True)
    return table[["section"] + [c for c in table.columns if c != "section"]]


def write_section_reports(
    results: Sequence[SectionMetrics],
    out_dir: str | os.PathLike,
    *,
    prefix: str = "",
    extra: Mapping[str, Any] | None = None,
    maps: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    n_map_genes: int = 4,
) -> dict[str, Path]:
    """Write `{prefix}metrics.json|csv`, `{prefix}per_gene.csv`, `{prefix}r_distribution.png`
    and, for sections in `maps` (section -> (positions, observed, predicted)), a PNG of the
    best-predicted genes. Returns the written paths by role."""
    if not results:
        raise ValueError("write_section_reports: no section results to write.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    payload = {
        **(dict(extra) if extra else {}),
        "per_section": [r.summary() for r in results],
        "mean": average_metrics(results),
    }
    paths["metrics_json"] = write_json(payload, out_dir / f"{prefix}metrics.json")
    paths["metrics_csv"] = write_csv(metrics_table(results), out_dir / f"{prefix}metrics.csv")
    paths["per_gene_csv"] = write_csv(per_gene_table(results), out_dir / f"{prefix}per_gene.csv")
    paths["r_distribution_png"] = plot_r_distribution(
        {r.section: r.per_gene["pearson_r"].to_numpy() for r in results},
        out_dir / f"{prefix}r_distribution.png",
        title=f"{prefix.rstrip('_') or 'Per-gene'} Pearson r per held-out section",
    )
    for r in results:
        if not maps or r.section not in maps:
            continue
        positions, observed, predicted = maps[r.section]
        ranked = r.per_gene.dropna(subset=["pearson_r"]).sort_values(
            "pearson_r", ascending=False, kind="stable"
        )
        genes = ranked["gene"].head(n_map_genes).tolist()
        if not genes:
            continue
        paths[f"gene_maps_{r.section}"] = plot_gene_maps(
            positions, observed, predicted, list(r.per_gene["gene"]), genes,
            out_dir / f"{prefix}best_genes_{r.section}.png",
            per_gene_r=r.per_gene["pearson_r"].to_numpy(),
            title=f"section {r.section}: best-predicted genes",
        )
    return paths


__all__ = [
    "metrics_table",
    "per_gene_table",
    "write_csv",
    "write_json",
    "write_section_reports",
    "write_text_atomic",
]
