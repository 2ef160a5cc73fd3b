"""The benchmark's summary: per-fold and mean metrics of every method, as JSON, CSV and Markdown.

Measured numbers and the paper's reported numbers never share a table: the paper block is a
separate, labelled section (different protocol: 32 sections, 90 epochs, a GPU).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

SUMMARY_METRICS = ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae", "n_nan_genes")
METRIC_LABELS = {
    "pcc_acg": "PCC(ACG)",
    "pcc_heg": "PCC(HEG)",
    "pcc_hvg": "PCC(HVG)",
    "mse": "MSE",
    "mae": "MAE",
    "n_nan_genes": "NaN genes dropped",
}
HIGHER_IS_BETTER = {"pcc_acg": True, "pcc_heg": True, "pcc_hvg": True, "mse": False, "mae": False}


def _fmt(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric == "n_nan_genes":
        return str(int(value))
    return f"{float(value):.4f}"


def _table(rows: dict[str, dict[str, Any]], methods: dict[str, dict], bold_best: bool) -> list[str]:
    """Markdown: metric rows × method columns; `rows[method][metric]`."""
    keys = list(methods)
    lines = ["| metric | " + " | ".join(methods[m]["label"] for m in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for metric in SUMMARY_METRICS:
        values = {m: rows.get(m, {}).get(metric) for m in keys}
        best = None
        if bold_best and metric in HIGHER_IS_BETTER:
            finite = {m: float(v) for m, v in values.items()
                      if v is not None and math.isfinite(float(v))}
            if finite:
                pick = max if HIGHER_IS_BETTER[metric] else min
                best = pick(finite, key=finite.get)
        cells = [f"**{_fmt(values[m], metric)}**" if m == best else _fmt(values[m], metric)
                 for m in keys]
        lines.append(f"| {METRIC_LABELS[metric]} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """The human-readable summary (summary.md)."""
    methods = summary["methods"]
    out = [
        f"# Benchmark: {summary['dataset']}, {summary['split']} split, profile `{summary['profile']}`",
        "",
        f"- Command: `{summary['command']}`",
        f"- Machine: {summary['machine']}",
        (f"- Date: {summary['date']}; mclstexp-hub {summary['package_version']}; "
        f"wall time {summary['seconds'] / 60:.1f} min"),
        (f"- Data: sections {', '.join(summary['sections'])}; {summary['n_genes']} genes "
        f"({summary['gene_panel']}); expression units: {summary['expression_units']}"),
        f"- Profile `{summary['profile']}`: {summary['profile_description']}",
        "",
        ("Measured here. Per-gene Pearson r over the spots of each held-out section; PCC(ACG) "
        "= mean over all genes, PCC(HEG)/PCC(HVG) = over the 50 genes with the highest mean / "
        "variance of observed expression in that section; genes with a constant prediction or "
        "truth have no r and are dropped (counted in the last row). Best value per row in bold."),
        "",
        "Methods:",
    ]
    for key, m in methods.items():
        out.append(f"- **{m['label']}** (`{key}`): {m.get('description', '')}")
    run_folds = {f["fold"] for m in methods.values() for f in m["per_fold"]}
    held_out = [s for f in summary["folds"] if f["fold"] in run_folds for s in f["held_out"]]
    plural = "" if len(held_out) == 1 else "s"
    title = f"## Mean over held-out sections ({len(held_out)} section{plural}: {', '.join(held_out)})"
    out += ["", title, ""]
    out += _table({k: m["mean"] for k, m in methods.items()}, methods, bold_best=True)
    for fold in summary["folds"]:
        i = fold["fold"]
        rows = {}
        for key, m in methods.items():
            match = [f for f in m["per_fold"] if f["fold"] == i]
            if match:
                rows[key] = match[0]
        if not rows:
            continue
        out += ["", (f"## Fold {i}: held out {', '.join(fold['held_out'])}; trained on "
                f"{', '.join(fold['train'])}"), ""]
        out += _table(rows, methods, bold_best=True)
    paper = summary.get("paper_reported") or {}
    block = paper.get(summary["dataset"])
    out += ["", "## Reported in the paper (not measured here)", "",
            (f"Source: {paper.get('source', '?')}; protocol: {paper.get('split', '?')}. "
            "A different protocol from the tables above (more sections, 90 epochs, GPU); "
            "not comparable number for number."), ""]
    if block:
        out += ["| dataset | PCC(ACG) | PCC(HEG) |", "|---|---:|---:|"]
        for name in ("her2st", "cscc", "alex10x"):
            if name in paper:
                out.append(f"| {name} | {paper[name]['pcc_acg']:.4f} | {paper[name]['pcc_heg']:.4f} |")
    return "\n".join(out) + "\n"


def summary_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """Long table for summary.csv: one row per method × fold, plus a `mean` row per method."""
    rows = []
    for key, m in summary["methods"].items():
        for f in m["per_fold"]:
            rows.append({"method": key, "label": m["label"], "fold": f["fold"],
                         "held_out": " ".join(f["held_out"]),
                         **{k: f.get(k) for k in SUMMARY_METRICS}})
        rows.append({"method": key, "label": m["label"], "fold": "mean",
                     "held_out": "all held-out sections",
                     **{k: m["mean"].get(k) for k in SUMMARY_METRICS}})
    return pd.DataFrame(rows)


__all__ = ["METRIC_LABELS", "SUMMARY_METRICS", "summary_frame", "summary_markdown"]
