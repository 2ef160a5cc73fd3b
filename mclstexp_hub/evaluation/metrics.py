"""Per-gene Pearson r and the paper's summary metrics for one held-out section.

Definitions (GUIDE.md; the mclSTExp/BLEEP evaluation):

- per-gene Pearson r between predicted and observed expression over the spots of a section;
  a gene whose prediction or observation is constant has no r (NaN) and is *dropped* from the
  means — and counted, because a model that predicts constants must not look better for it;
- PCC(ACG): mean r over all genes of the panel;
- PCC(HEG): mean r over the ``n_top`` (50) genes with the highest mean *observed* expression
  in that section; PCC(HVG): the ``n_top`` genes with the highest observed variance;
- MSE / MAE: over all genes and spots, in the dataset's expression units.

Sections are scored separately and averaged afterwards (``average_metrics``), as the paper
reports the mean over held-out sections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

DEFAULT_N_TOP = 50
SCALAR_METRICS = ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")


def _as_matrix(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (n_spots, n_genes) matrix; got shape {array.shape}.")
    return array


def pearson_per_gene(predicted: Any, observed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and two-sided p-value per column, as `scipy.stats.pearsonr` per gene.

    Vectorised over genes (785 genes × a few hundred spots in one pass). A column that is
    constant in either matrix gets r = p = NaN, as scipy returns for it.
    """
    x = _as_matrix(predicted, "predicted")
    y = _as_matrix(observed, "observed")
    if x.shape != y.shape:
        raise ValueError(f"predicted {x.shape} and observed {y.shape} must have the same shape.")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"Pearson r needs at least 2 spots; got {n}.")
    constant = (x == x[:1]).all(axis=0) | (y == y[:1]).all(axis=0)
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    # Normalise each centred column first (as scipy does) so that tiny-variance genes keep
    # their precision instead of under/overflowing in the product of sums of squares.
    with np.errstate(invalid="ignore", divide="ignore"):
        xn = xc / np.linalg.norm(xc, axis=0)
        yn = yc / np.linalg.norm(yc, axis=0)
        r = np.clip((xn * yn).sum(axis=0), -1.0, 1.0)
    r[constant] = np.nan
    # Under H0, r follows Beta(n/2 - 1, n/2 - 1) on [-1, 1]; p = 2 * CDF(-|r|), scipy's formula.
    a = n / 2.0 - 1.0
    with np.errstate(invalid="ignore"):
        p = 2.0 * special.betainc(a, a, 0.5 * (1.0 - np.abs(r))) if n > 2 else np.ones_like(r)
    p = np.clip(p, 0.0, 1.0)
    p[constant] = np.nan
    return r, p


def top_genes(observed: np.ndarray, n_top: int, by: str) -> np.ndarray:
    """Column indices of the `n_top` genes with the largest observed mean (`by="mean"`) or
    variance (`by="var"`), largest first; ties keep panel order (stable sort)."""
    if by == "mean":
        score = observed.mean(axis=0)
    elif by == "var":
        score = observed.var(axis=0)
    else:
        raise ValueError(f"top_genes: by must be 'mean' or 'var'; got {by!r}.")
    n_top = min(int(n_top), observed.shape[1])
    return np.argsort(-score, kind="stable")[:n_top]


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass
class SectionMetrics:
    """Metrics of one held-out section (or of any one group of spots scored together)."""

    section: str
    n_spots: int
    n_genes: int
    pcc_acg: float
    pcc_heg: float
    pcc_hvg: float
    mse: float
    mae: float
    n_nan_genes: int
    nan_genes: list[str]
    heg_genes: list[str]
    hvg_genes: list[str]
    n_top: int
    per_gene: pd.DataFrame = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars (no per-gene table)."""
        return {
            "section": self.section,
            "n_spots": self.n_spots,
            "n_genes": self.n_genes,
            **{name: getattr(self, name) for name in SCALAR_METRICS},
            "n_nan_genes": self.n_nan_genes,
            "nan_genes": list(self.nan_genes),
            "n_top": self.n_top,
            "heg_genes": list(self.heg_genes),
            "hvg_genes": list(self.hvg_genes),
        }


def check_gene_lists(predicted_genes: Sequence[str], observed_genes: Sequence[str]) -> None:
    """Prediction and truth must name the same genes in the same order."""
    predicted_genes, observed_genes = list(predicted_genes), list(observed_genes)
    if predicted_genes == observed_genes:
        return
    only_pred = [g for g in predicted_genes if g not in set(observed_genes)]
    only_obs = [g for g in observed_genes if g not in set(predicted_genes)]
    detail = (
        f"{len(only_pred)} predicted genes absent from the truth (e.g. {only_pred[:5]}), "
        f"{len(only_obs)} observed genes absent from the prediction (e.g. {only_obs[:5]})"
        if only_pred or only_obs
        else "same genes in a different order"
    )
    raise ValueError(
        f"Gene lists differ between prediction ({len(predicted_genes)} genes) and truth "
        f"({len(observed_genes)} genes): {detail}. Evaluate a model on data preprocessed with "
        "its own gene panel (config.gene_names)."
    )


def evaluate_section(
    predicted: Any,
    observed: Any,
    gene_names: Sequence[str],
    *,
    predicted_genes: Sequence[str] | None = None,
    section: str = "section",
    n_top: int = DEFAULT_N_TOP,
) -> SectionMetrics:
    """Score predictions for the spots of one section against the observed expression.

    `predicted` and `observed` are (n_spots, n_genes) in the same spot order; `gene_names`
    names the observed columns, `predicted_genes` (default: the same) the predicted ones.
    """
    gene_names = [str(g) for g in gene_names]
    if predicted_genes is not None:
        check_gene_lists(predicted_genes, gene_names)
    pred = _as_matrix(predicted, f"section {section}: predicted")
    obs = _as_matrix(observed, f"section {section}: observed")
    if pred.shape[0] == 0 or obs.shape[0] == 0:
        raise ValueError(
            f"section {section}: no spots to evaluate (empty section); check --sections and "
            "that the section has spots under tissue."
        )
    if pred.shape != obs.shape:
        raise ValueError(
            f"section {section}: predicted {pred.shape} and observed {obs.shape} must have the "
            "same (n_spots, n_genes) shape."
        )
    if obs.shape[1] != len(gene_names):
        raise ValueError(
            f"section {section}: {len(gene_names)} gene names for {obs.shape[1]} columns."
        )
    if not np.isfinite(pred).all():
        bad_genes = [gene_names[j] for j in np.flatnonzero(~np.isfinite(pred).all(axis=0))]
        raise ValueError(
            f"section {section}: predictions contain {int((~np.isfinite(pred)).sum())} NaN/inf "
            f"values (genes {bad_genes[:5]}); a prediction must be finite everywhere."
        )
    if not np.isfinite(obs).all():
        raise ValueError(f"section {section}: observed expression contains NaN/inf values.")
    if obs.shape[0] < 2:
        raise ValueError(
            f"section {section}: {obs.shape[0]} spot; per-gene Pearson r needs at least 2."
        )
    r, p = pearson_per_gene(pred, obs)
    heg = top_genes(obs, n_top, "mean")
    hvg = top_genes(obs, n_top, "var")
    err = pred - obs
    per_gene = pd.DataFrame(
        {
            "gene": gene_names,
            "pearson_r": r,
            "p_value": p,
            "observed_mean": obs.mean(axis=0),
            "observed_var": obs.var(axis=0),
            "predicted_mean": pred.mean(axis=0),
            "mse": (err**2).mean(axis=0),
            "mae": np.abs(err).mean(axis=0),
            "is_heg": np.isin(np.arange(len(gene_names)), heg),
            "is_hvg": np.isin(np.arange(len(gene_names)), hvg),
        }
    )
    nan_mask = ~np.isfinite(r)
    return SectionMetrics(
        section=str(section),
        n_spots=int(obs.shape[0]),
        n_genes=int(obs.shape[1]),
        pcc_acg=_nanmean(r),
        pcc_heg=_nanmean(r[heg]),
        pcc_hvg=_nanmean(r[hvg]),
        mse=float((err**2).mean()),
        mae=float(np.abs(err).mean()),
        n_nan_genes=int(nan_mask.sum()),
        nan_genes=[gene_names[j] for j in np.flatnonzero(nan_mask)],
        heg_genes=[gene_names[j] for j in heg],
        hvg_genes=[gene_names[j] for j in hvg],
        n_top=int(min(n_top, len(gene_names))),
        per_gene=per_gene,
    )


def average_metrics(results: Sequence[SectionMetrics | dict[str, Any]]) -> dict[str, Any]:
    """Mean (and sample std) of each scalar metric over sections; NaN-gene counts are summed."""
    if not results:
        raise ValueError("average_metrics: no section results to average.")
    rows = [r.summary() if isinstance(r, SectionMetrics) else dict(r) for r in results]
    out: dict[str, Any] = {"n_sections": len(rows)}
    for name in SCALAR_METRICS:
        values = np.array([float(row[name]) for row in rows], dtype=np.float64)
        out[name] = _nanmean(values)
        finite = values[np.isfinite(values)]
        out[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    out["n_nan_genes"] = int(sum(int(row.get("n_nan_genes", 0)) for row in rows))
    return out


__all__ = [
    "DEFAULT_N_TOP",
    "SCALAR_METRICS",
    "SectionMetrics",
    "average_metrics",
    "check_gene_lists",
    "evaluate_section",
    "pearson_per_gene",
    "top_genes",
]
