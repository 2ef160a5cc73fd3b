"""Combine benchmark folds run in separate invocations into one summary.

A CPU benchmark may be run fold by fold (`mclstexp benchmark ... --folds 0`, then
`--folds 1 2 3` into the same `--out`). Every fold leaves `folds/fold{i}/{method}_metrics.json`
(per-section metrics) and `{method}_per_gene.csv`; this module recomputes the per-fold and
averaged figures from those files — nothing is copied by hand — and rewrites
`summary.json/.csv/.md` and `r_distribution.png` for all folds found.

    python -m mclstexp_hub.benchmark.merge RESULTS_DIR [--note "why folds were run apart"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mclstexp_hub.evaluation.metrics import average_metrics
from mclstexp_hub.evaluation.plots import plot_r_distribution
from mclstexp_hub.evaluation.report import write_csv, write_json, write_text_atomic

from .methods import list_methods
from .summary import summary_frame, summary_markdown

_SCALARS = ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")


def _fold_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    rows = metrics["per_section"]
    mean = average_metrics(rows)
    fold = metrics["fold"]
    return {"fold": fold["fold"], "held_out": list(fold["held_out"]),
            **{k: mean[k] for k in _SCALARS}, "n_nan_genes": mean["n_nan_genes"],
            "per_section": rows, "details": metrics.get("details", {})}


def merge_folds(results_dir: str | Path, note: str | None = None) -> dict[str, Any]:
    """Rewrite the summary of `results_dir` from every completed fold on disk."""
    out = Path(results_dir)
    base_path = out / "summary.json"
    if not base_path.is_file():
        raise FileNotFoundError(
            f"{base_path} not found: run `mclstexp benchmark ... --out {out}` for at least one "
            "set of folds first; merging reuses its settings block."
        )
    summary = json.loads(base_path.read_text())
    fold_dirs = sorted((out / "folds").glob("fold*"), key=lambda p: int(p.name[4:]))
    # Methods are those scored on disk (a later `--methods X` run may have refreshed one),
    # in the runner's order.
    on_disk = {f.name[: -len("_metrics.json")] for d in fold_dirs for f in d.glob("*_metrics.json")}
    order = list_methods()  # the registry's order (benchmark/methods.py)
    methods = [m for m in order if m in on_disk] + sorted(on_disk - set(order))
    per_fold: dict[str, list] = {m: [] for m in methods}
    sections: dict[str, list] = {m: [] for m in methods}
    r_values: dict[str, list] = {m: [] for m in methods}
    folds_found = []
    for fold_dir in fold_dirs:
        files = {m: fold_dir / f"{m}_metrics.json" for m in methods}
        if not all(f.is_file() for f in files.values()):
            continue  # an interrupted fold: skipped, and not listed as run
        folds_found.append(int(fold_dir.name[4:]))
        for method, path in files.items():
            metrics = json.loads(path.read_text())
            entry = summary["methods"].setdefault(method, {})
            entry.setdefault("label", metrics.get("label", method))
            per_fold[method].append(_fold_entry(metrics))
            sections[method].extend(metrics["per_section"])
            genes = pd.read_csv(fold_dir / f"{method}_per_gene.csv")
            r_values[method].append(genes["pearson_r"].to_numpy(dtype=float))
    # Labels/descriptions of methods the latest run did not include come from earlier
    # summaries kept beside it (summary_*.json).
    for older in sorted(out.glob("summary_*.json")):
        for method, info in json.loads(older.read_text()).get("methods", {}).items():
            entry = summary["methods"].setdefault(method, {})
            for key in ("label", "description"):
                if key in info and key not in entry:
                    entry[key] = info[key]
    if not folds_found:
        raise ValueError(f"{out}/folds holds no completed fold to merge.")
    for method in methods:
        summary["methods"][method]["per_fold"] = per_fold[method]
        summary["methods"][method]["mean"] = average_metrics(sections[method])
    summary["folds_run"] = folds_found
    summary["merged_from_fold_dirs"] = True
    if note:
        summary["merge_note"] = note
    labels = {m: summary["methods"][m].get("label", m) for m in methods}
    plot_r_distribution(
        {labels[m]: np.concatenate(r_values[m]) for m in methods},
        out / "r_distribution.png",
        title=f"Per-gene Pearson r, all held-out sections ({summary['split']} split)",
    )
    write_csv(summary_frame(summary), out / "summary.csv")
    write_text_atomic(summary_markdown(summary), out / "summary.md")
    write_json(summary, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("--note", default=None, help="recorded in summary.json as merge_note")
    args = parser.parse_args(argv)
    summary = merge_folds(args.results_dir, note=args.note)
    print(f"merged folds {summary['folds_run']} into {args.results_dir}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
