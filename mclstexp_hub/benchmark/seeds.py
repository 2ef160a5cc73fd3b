"""Seed-to-seed spread and the verdict over benchmark runs that differ only in `--seed`.

One benchmark run gives one number per method; whether a difference between two methods is
real depends on how much a method moves when only its seed changes. This module reads the
`summary.json` of several runs (same dataset, split, profile and methods; different seeds),
and writes, per method and metric, the mean over seeds, the spread (max − min over seeds) and
the per-seed values, then the verdict: the method beats a baseline on a metric when its mean
over seeds exceeds the baseline's by more than the larger of the two spreads, loses when it
falls short by more than that, and ties otherwise.

    python -m mclstexp_hub.benchmark.seeds RUN_seed0 RUN_seed1 RUN_seed2 --out SEEDS_DIR \
        [--method mclstexp]

Writes SEEDS_DIR/seeds.json and SEEDS_DIR/seeds.md; every figure is computed from the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mclstexp_hub.evaluation.report import write_json, write_text_atomic

METRICS = ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")
HIGHER_IS_BETTER = {"pcc_acg": True, "pcc_heg": True, "pcc_hvg": True, "mse": False, "mae": False}
VERDICT_METRICS = ("pcc_acg", "pcc_heg")
_SAME = ("dataset", "split", "profile", "sections")


def _load(run: Path) -> dict[str, Any]:
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found — pass finished benchmark folders "
                                "(each holds summary.json).")
    return json.loads(path.read_text())


def combine_seeds(runs: list[str | Path], method: str = "mclstexp") -> dict[str, Any]:
    """Mean, spread and per-seed values per method and metric, and `method`'s verdict."""
    if len(runs) < 2:
        raise ValueError("combine_seeds needs at least 2 runs (different --seed) to measure a spread.")
    summaries = [_load(r) for r in runs]
    first = summaries[0]
    for run, s in zip(runs[1:], summaries[1:], strict=True):
        for key in _SAME:
            if s.get(key) != first.get(key):
                raise ValueError(f"{run}: {key} is {s.get(key)!r} but {runs[0]} has "
                                 f"{first.get(key)!r}; combine runs that differ only in --seed.")
    seeds = [s["settings"]["seed"] for s in summaries]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs' seeds {seeds} repeat; each run must have its own --seed.")
    methods = [m for m in first["methods"] if all(m in s["methods"] for s in summaries)]
    if method not in methods:
        raise ValueError(f"method {method!r} is not in every run (common methods: {methods}).")
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        entry = {"label": first["methods"][m]["label"]}
        for metric in METRICS:
            values = [float(s["methods"][m]["mean"][metric]) for s in summaries]
            entry[metric] = {"mean": float(np.mean(values)),
                             "spread": float(np.max(values) - np.min(values)),
                             "per_seed": values}
        table[m] = entry
    verdict: dict[str, Any] = {}
    ours = table[method]
    for other in methods:
        if other == method:
            continue
        row = {}
        for metric in VERDICT_METRICS:
            sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            margin = sign * (ours[metric]["mean"] - table[other][metric]["mean"])
            needed = max(ours[metric]["spread"], table[other][metric]["spread"])
            outcome = "beats" if margin > needed else "loses" if margin < -needed else "ties"
            row[metric] = {"margin": margin, "spread": needed, "beats": bool(margin > needed),
                           "outcome": outcome}
        verdict[other] = row
    beats_all = all(v[m]["beats"] for v in verdict.values() for m in VERDICT_METRICS)
    return {"dataset": first["dataset"], "split": first["split"], "profile": first["profile"],
            "profile_description": first.get("profile_description"),
            "sections": first["sections"], "seeds": seeds, "runs": [str(r) for r in runs],
            "method": method, "methods": table, "verdict": verdict, "beats_all": beats_all,
            "commands": [s.get("command") for s in summaries],
            "machine": first.get("machine")}


_OUTCOME_WORDS = {"beats": "beats", "loses": "loses (beyond the spread)",
                  "ties": "tie (within the spread)"}


def seeds_markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    lines = [f"# {result['dataset']} — {result['split']} split, profile `{result['profile']}`, "
             f"seeds {result['seeds']}", "",
             "Mean over seeds of each run's mean over held-out sections; ± = spread (max − min "
             "over seeds).", "",
             "| method | " + " | ".join(m.upper().replace("PCC_", "PCC(") + (")" if "pcc" in m else "")
                                      for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for name, entry in methods.items():
        cells = [f"{entry[m]['mean']:.4f} ± {entry[m]['spread']:.4f}" for m in METRICS]
        bold = "**" if name == result["method"] else ""
        lines.append(f"| {bold}{entry['label']}{bold} | " + " | ".join(cells) + " |")
    lines += ["", f"Verdict for {methods[result['method']]['label']} (beats = mean margin larger "
              "than the larger spread):", ""]
    for other, row in result["verdict"].items():
        parts = [f"{m.upper().replace('PCC_', 'PCC(')}) margin {v['margin']:+.4f} vs spread "
                 f"{v['spread']:.4f} → {_OUTCOME_WORDS[v['outcome']]}"
                 for m, v in row.items()]
        lines.append(f"- vs {methods[other]['label']}: " + "; ".join(parts))
    lines += ["", f"**Beats every baseline on PCC(ACG) and PCC(HEG): "
              f"{'yes' if result['beats_all'] else 'no'}.**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mclstexp_hub.benchmark.seeds",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="benchmark result folders, one per seed")
    p.add_argument("--out", required=True, help="folder for seeds.json and seeds.md")
    p.add_argument("--method", default="mclstexp", help="the method the verdict is about")
    args = p.parse_args(argv)
    try:
        result = combine_seeds(args.runs, method=args.method)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} exists and is not a folder; choose a folder.", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "seeds.json")
    text = seeds_markdown(result)
    write_text_atomic(text, out / "seeds.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
