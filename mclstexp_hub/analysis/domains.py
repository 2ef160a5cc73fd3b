"""Spatial domains from predicted expression: PCA → k-means, scored by ARI / NMI.

This is how the mclSTExp paper evaluates whether predicted expression carries tissue structure:
cluster the spots on the principal components of their (predicted) expression and compare the
clusters with a pathologist's region labels. Spots whose label is empty or "undetermined" are
left out of the scores (they carry no region), and the number scored is reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

IGNORED_LABELS = ("", "undetermined", "nan", "none")
DEFAULT_N_PCS = 30


def spatial_domains(
    expression: np.ndarray, n_clusters: int, n_pcs: int = DEFAULT_N_PCS, seed: int = 0
) -> np.ndarray:
    """Cluster ids (0..K-1) of each spot: PCA of centred expression, then k-means (10 inits)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    X = np.asarray(expression, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expression must be (n_spots, n_genes); got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError("expression contains NaN/inf; domains need finite values.")
    if not isinstance(n_pcs, int) or isinstance(n_pcs, bool) or n_pcs < 1:
        raise ValueError(f"--n-pcs must be a positive integer; got {n_pcs!r}.")
    if not isinstance(n_clusters, int) or n_clusters < 2:
        raise ValueError(f"--n-clusters must be an integer >= 2; got {n_clusters!r}.")
    if X.shape[0] < n_clusters:
        raise ValueError(f"{X.shape[0]} spots cannot form {n_clusters} clusters; lower --n-clusters.")
    n_components = max(1, min(n_pcs, X.shape[1], X.shape[0] - 1))
    pcs = PCA(n_components=n_components, random_state=seed).fit_transform(X - X.mean(axis=0))
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(pcs)


def domain_scores(
    clusters: np.ndarray, labels: np.ndarray, ignore: tuple[str, ...] = IGNORED_LABELS
) -> dict[str, float | int]:
    """ARI and NMI of clusters against region labels, over labelled spots only."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray([str(v) for v in labels], dtype=object)
    keep = ~np.isin(np.char.lower(labels.astype(str)), [s.lower() for s in ignore])
    if keep.sum() < 2:
        raise ValueError(
            "fewer than 2 spots carry a region label (empty/'undetermined' are ignored); "
            "check --labels."
        )
    clusters = np.asarray(clusters)[keep]
    labels = labels[keep]
    return {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "n_labelled": int(keep.sum()),
        "n_label_classes": len(set(labels)),
    }


def read_labels(spec: str, adata) -> tuple[np.ndarray, str]:
    """Region label of every spot of `adata` from an obs key or a file; ("" = unlabelled).

    A file is CSV/TSV with a `label` column and, to place each label, one of: `spot_id` (matched
    by id); `x`, `y` array coordinates (rounded, matched to obs array_x/array_y or to spot ids
    "{x}x{y}" — her2st's `ST-pat/lbl/*_labeled_coordinates.tsv`, whose pixel columns are not in
    the full-resolution frame); or `pixel_x`, `pixel_y` (nearest spot centre within half a spot
    diameter).
    """
    if spec in adata.obs.columns:
        values = adata.obs[spec].astype(str).fillna("").to_numpy()
        return values, f"obs[{spec!r}]"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--labels {spec!r} is neither a column of the prediction's obs "
            f"({list(adata.obs.columns)}) nor a file."
        )
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"--labels {path}: cannot parse the label table ({exc}); give a CSV/TSV "
                         "with a `label` column.") from exc
    if "label" not in table.columns:
        raise ValueError(f"--labels {path}: no `label` column (found {list(table.columns)}).")
    table["label"] = table["label"].fillna("").astype(str)
    if "spot_id" in table.columns:
        mapping = dict(zip(table["spot_id"].astype(str), table["label"], strict=True))
        values = np.array([mapping.get(s, "") for s in adata.obs_names.astype(str)], dtype=object)
        if not any(values):
            raise ValueError(f"{path}: no spot_id matches the prediction's spots.")
        return values, f"{path} (by spot_id)"
    if {"x", "y"} <= set(table.columns):
        values = _labels_by_array_position(table, adata)
        if values is not None:
            return values, f"{path} (by array position x, y)"
    if {"pixel_x", "pixel_y"} <= set(table.columns):
        from scipy.spatial import cKDTree

        centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        library = next(iter(adata.uns.get("spatial", {}) or {}), None)
        radius = None
        if library is not None:
            radius = adata.uns["spatial"][library]["scalefactors"].get("spot_diameter_fullres")
        radius = float(radius) / 2 if radius else np.inf
        points = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        distance, nearest = cKDTree(points).query(centres, k=1)
        values = np.where(distance <= radius, table["label"].to_numpy()[nearest], "")
        if not any(values):
            raise ValueError(
                f"{path}: no labelled point lies within half a spot diameter of a predicted spot; "
                "are the labels from this slide (full-resolution pixels)?"
            )
        return values.astype(object), f"{path} (nearest labelled point within {radius:g} px)"
    raise ValueError(
        f"{path}: needs `label` with `spot_id`, array `x`/`y` or `pixel_x`/`pixel_y` columns "
        f"(found {list(table.columns)})."
    )


def _labels_by_array_position(table: pd.DataFrame, adata) -> np.ndarray | None:
    """Labels keyed by rounded array (x, y) — her2st's label tables, whose pixel columns are in
    another frame than the full-resolution image. Spots are keyed by `obs` array_x/array_y, else
    by ids of the form "{x}x{y}". None when nothing matches."""
    xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    ok = xy.notna().all(axis=1).to_numpy()
    keys = (np.rint(xy["x"][ok]).astype(int).astype(str) + "x"
            + np.rint(xy["y"][ok]).astype(int).astype(str))
    mapping = dict(zip(keys, table["label"][ok], strict=True))
    if {"array_x", "array_y"} <= set(adata.obs.columns):
        spot_keys = (adata.obs["array_x"].astype(int).astype(str) + "x"
                     + adata.obs["array_y"].astype(int).astype(str)).tolist()
    else:
        spot_keys = adata.obs_names.astype(str).tolist()
    values = np.array([mapping.get(k, "") for k in spot_keys], dtype=object)
    return values if any(values) else None


@dataclass
class DomainResult:
    clusters: np.ndarray
    scores: dict[str, float | int] | None
    labels_source: str | None


def run_domains(
    adata, n_clusters: int, labels: str | None = None, n_pcs: int = DEFAULT_N_PCS, seed: int = 0,
    key: str = "mclstexp_domain",
) -> DomainResult:
    """Cluster `adata.X` into `obs[key]` (categorical); score against `labels` when given."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    clusters = spatial_domains(X, n_clusters, n_pcs=n_pcs, seed=seed)
    adata.obs[key] = pd.Categorical([f"D{c}" for c in clusters])
    scores = source = None
    if labels is not None:
        values, source = read_labels(labels, adata)
        adata.obs["region_label"] = pd.Categorical(values.astype(str))
        scores = domain_scores(clusters, values)
    return DomainResult(clusters=clusters, scores=scores, labels_source=source)


__all__ = ["DomainResult", "domain_scores", "read_labels", "run_domains", "spatial_domains"]
