"""Retrieval k (and weighting) chosen by inner cross-validation on the training sections.

`mclstexp train --retrieval-k auto`: for each training section in turn, the bank is the other
training sections' spots (the trained spot tower, the recorded batching: runs of 32 in dataset
order), the queries are the left-out section's patches through the trained image tower, and the
score is the mean per-gene Pearson r (PCC(ACG), NaN genes dropped) of the retrieved prediction
against the left-out section's expression. The (k, weighting) with the highest mean score over
the left-out sections wins. The held-out test sections are never seen: only training spots are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..models.mclstexp.modeling_mclstexp import DEFAULT_BANK_BATCH_SIZE
from .bank import bank_from_arrays

DEFAULT_K_GRID = (10, 25, 50, 100, 200, 400)
DEFAULT_WEIGHTINGS = ("inverse_square", "mean")


def _image_embeddings(model: Any, spots: Any, image_features: torch.Tensor | None,
                      progress: bool) -> torch.Tensor:
    """Projected image embeddings of every training spot's clean patch (eval mode)."""
    if image_features is None:
        if spots.patches is None:
            raise ValueError("retrieval k by validation needs the training patches or their "
                             "cached clean features.")
        from .features import compute_image_features

        image_features = compute_image_features(model, spots.patches, 1, progress=progress)[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.get_image_features(
                image_features=image_features.to(model.device)).pooler_output.float().cpu()
    finally:
        model.train(was_training)


def select_retrieval_by_inner_cv(
    model: Any,
    spots: Any,
    *,
    image_features: torch.Tensor | None = None,
    k_grid: Sequence[int] = DEFAULT_K_GRID,
    weightings: Sequence[str] = DEFAULT_WEIGHTINGS,
    batch_size: int = DEFAULT_BANK_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, Any]:
    """Leave-one-training-section-out scores over `k_grid` × `weightings`; the argmax.

    `spots`: the training `SpotPatchDataset` (expression, positions, sections, patches).
    `image_features`: its clean pooled encoder features (N, F) when cached (frozen encoder).
    Returns a JSON-ready dict: the grid, the per-section and mean score of every (k, weighting),
    and the chosen `retrieval_k` / `retrieval_weighting`.
    """
    sections = np.asarray([str(s) for s in spots.sections])
    names = list(dict.fromkeys(sections.tolist()))
    if len(names) < 2:
        raise ValueError(
            f"--retrieval-k auto needs at least 2 training sections for leave-one-section-out "
            f"validation; got {names}. Pass a number to --retrieval-k instead."
        )
    smallest_bank = min(int((sections != s).sum()) for s in names)
    grid = sorted({int(k) for k in k_grid if int(k) <= smallest_bank})
    if not grid:
        grid = [smallest_bank]
    queries = _image_embeddings(model, spots, image_features, progress)
    expression = torch.as_tensor(spots.expression, dtype=torch.float32)
    positions = torch.as_tensor(spots.positions)
    patients = list(getattr(spots, "patients", []) or [])
    distance = model.config.retrieval_distance
    scores: dict[str, dict[str, dict[str, float]]] = {w: {} for w in weightings}
    for left_out in names:
        test = np.flatnonzero(sections == left_out)
        train = np.flatnonzero(sections != left_out)
        bank = bank_from_arrays(
            model, expression[train], positions[train], sections[train].tolist(),
            [patients[i] for i in train] if patients else [], batch_size=batch_size,
            progress=False, attach=False, built_with="inner validation fold",
        )
        _score_left_out(bank, queries[test], expression[test].numpy(), left_out, grid,
                        weightings, distance, scores)
    return _choose(scores, grid, weightings, names, distance, method=(
        "leave-one-training-section-out; bank = the other training sections' spots "
        f"(spot tower, runs of {batch_size} in dataset order); queries = the left-out "
        "section's clean patches; score = mean per-gene Pearson r (PCC ACG)"),
        all_nan="--retrieval-k auto: every validation score is NaN (constant predictions); "
                "pass a number to --retrieval-k.")


def select_retrieval_against_bank(
    bank: Any,
    queries: torch.Tensor,
    observed: np.ndarray,
    sections: Sequence[str],
    patients: Sequence[str],
    *,
    distance: str,
    k_grid: Sequence[int] = DEFAULT_K_GRID,
    weightings: Sequence[str] = DEFAULT_WEIGHTINGS,
) -> dict[str, Any]:
    """k and weighting for retrieval from a fixed reference `bank` (e.g. one built from
    expression alone), validated on the training spots: for each training section in turn,
    its `queries` (projected image embeddings, (N, D)) retrieve from the bank's spots of other
    patients than the section's own — as a held-out patient is absent from the bank at test
    time — and are scored against `observed` (N, G) by mean per-gene Pearson r. Same grid,
    argmax and record as `select_retrieval_by_inner_cv`."""
    from ..models.mclstexp.spot_bank_mclstexp import SpotBank

    sections = np.asarray([str(s) for s in sections])
    patients = np.asarray([str(p) for p in patients])
    names = list(dict.fromkeys(sections.tolist()))
    bank_patients = np.asarray([str(p) for p in bank.patient_ids])
    if len(bank_patients) != len(bank):
        raise ValueError("retrieval selection against a bank needs the bank's patient ids.")
    keeps = {s: np.flatnonzero(bank_patients != patients[sections == s][0]) for s in names}
    smallest_bank = min(len(keep) for keep in keeps.values())
    if smallest_bank == 0:
        raise ValueError("the reference bank holds only the training sections' own patients; "
                         "validation against it would have an empty bank.")
    grid = sorted({int(k) for k in k_grid if int(k) <= smallest_bank}) or [smallest_bank]
    queries = torch.as_tensor(queries, dtype=torch.float32)
    scores: dict[str, dict[str, dict[str, float]]] = {w: {} for w in weightings}
    for left_out in names:
        rows, keep = np.flatnonzero(sections == left_out), keeps[left_out]
        others = SpotBank(bank.embeddings[keep], bank.expression[keep], bank.gene_names)
        _score_left_out(others, queries[rows], np.asarray(observed)[rows], left_out, grid,
                        weightings, distance, scores)
    return _choose(scores, grid, weightings, names, distance, method=(
        f"each training section's clean patches retrieve from the reference bank ({len(bank)} "
        "spots) minus that section's patient; score = mean per-gene Pearson r (PCC ACG)"),
        all_nan="choosing k against the reference bank: every validation score is NaN "
                "(constant predictions); check that the bank's expression varies across spots.")


def _score_left_out(bank: Any, queries: torch.Tensor, observed: np.ndarray, left_out: str,
                    grid: Sequence[int], weightings: Sequence[str], distance: str,
                    scores: dict[str, dict[str, dict[str, float]]]) -> None:
    """Score every (k, weighting) of the grid for one left-out section, into `scores`."""
    from ..evaluation.metrics import pearson_per_gene

    _, order = bank.search(queries, max(grid))  # sorted by similarity
    for weighting in weightings:
        for k in grid:
            predicted = bank.retrieve(queries, k, distance, weighting,
                                      indices=order[:, :k])[0].numpy()
            r, _ = pearson_per_gene(predicted, observed)
            value = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
            scores[weighting].setdefault(str(k), {})[left_out] = value


def _choose(scores: dict[str, dict[str, dict[str, float]]], grid: Sequence[int],
            weightings: Sequence[str], names: list[str], distance: str,
            method: str, all_nan: str) -> dict[str, Any]:
    """The curve (mean over left-out sections) and its argmax, as a JSON-ready record.

    `all_nan`: the error's text when no score is finite (who chose, and the way out)."""
    curve = []
    for weighting in weightings:
        for k in grid:
            per_section = scores[weighting][str(k)]
            values = [v for v in per_section.values() if np.isfinite(v)]
            curve.append({"k": k, "weighting": weighting,
                          "mean_pcc_acg": float(np.mean(values)) if values else float("nan"),
                          "per_section": per_section})
    finite = [c for c in curve if np.isfinite(c["mean_pcc_acg"])]
    if not finite:
        raise ValueError(all_nan)
    # argmax; ties go to the smaller k, then to the weighting listed first
    best = max(finite, key=lambda c: (c["mean_pcc_acg"], -c["k"],
                                      -list(weightings).index(c["weighting"])))
    return {
        "method": method,
        "distance": distance,
        "k_grid": list(grid),
        "weightings": list(weightings),
        "sections": names,
        "curve": curve,
        "retrieval_k": int(best["k"]),
        "retrieval_weighting": best["weighting"],
        "best_mean_pcc_acg": best["mean_pcc_acg"],
    }


__all__ = ["DEFAULT_K_GRID", "DEFAULT_WEIGHTINGS", "select_retrieval_against_bank",
           "select_retrieval_by_inner_cv"]
