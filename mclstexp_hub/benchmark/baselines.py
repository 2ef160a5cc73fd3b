"""Baselines run on the same folds as mclSTExp, so a gain can be attributed to the method.

(a) BLEEP-style ablation: the same training with no spot Transformer and no position
    embeddings (`BLEEP_ABLATION_OVERRIDES` passed to `train_model`); what the paper's spot
    tower adds over BLEEP's.
(b) top-k mean retrieval on *frozen* encoder features: cosine top-k of the held-out patch's
    pooled encoder features among the training patches', plain mean of their expression.
    No training at all: what retrieval gets without a learned joint embedding.
(c) HEST probe (Jaume et al., HEST-1k, NeurIPS 2024): standardise the frozen features, PCA to
    256 components, ridge regression to all genes; scaler and PCA fitted on training spots
    only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import exact_cosine_topk

BLEEP_ABLATION_OVERRIDES: dict[str, Any] = {
    "spot_encoder_layers": 0,
    "use_position_embeddings": False,
}
HEST_PCA_COMPONENTS = 256


def _as_float_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(torch.float32).cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_spots, dim); got shape {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no spots.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values.")
    return t


def topk_mean_predict(
    train_features: Any,
    train_expression: Any,
    query_features: Any,
    k: int,
    chunk_size: int = 65536,
) -> np.ndarray:
    """Mean expression of the k training spots whose frozen features are most cosine-similar
    to each query's. Returns (Q, G) float32."""
    bank = _as_float_tensor(train_features, "train_features")
    expr = _as_float_tensor(train_expression, "train_expression")
    queries = _as_float_tensor(query_features, "query_features")
    if bank.shape[0] != expr.shape[0]:
        raise ValueError(
            f"{bank.shape[0]} training feature rows but {expr.shape[0]} expression rows."
        )
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"query features have {queries.shape[1]} dims, training features {bank.shape[1]}."
        )
    _, idx = exact_cosine_topk(queries, bank, int(k), chunk_size=chunk_size)
    return expr[idx].mean(dim=1).numpy()


def hest_ridge_alpha(n_features: int, n_targets: int) -> float:
    """HEST-Benchmark's ridge penalty: 100 / (n_features · n_targets)."""
    return 100.0 / (n_features * n_targets)


RIDGE_ALPHA_GRID = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5)


def _probe_pipeline(X: np.ndarray, n_components: int, seed: int):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    n_used = int(min(n_components, X.shape[0], X.shape[1]))
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=n_used, random_state=seed).fit(scaler.transform(X))
    return scaler, pca, n_used


def _mean_gene_r(pred: np.ndarray, obs: np.ndarray) -> float:
    from mclstexp_hub.evaluation.metrics import pearson_per_gene

    r, _ = pearson_per_gene(pred, obs)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("-inf")


def select_ridge_alpha(
    train_features: Any,
    train_expression: Any,
    groups: Any,
    alphas: tuple[float, ...] = RIDGE_ALPHA_GRID,
    n_components: int = HEST_PCA_COMPONENTS,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """Ridge penalty chosen by leave-one-group-out CV *within the training spots* (groups =
    their sections; 3 random folds when there is only one), scored by the mean per-gene
    Pearson r — the benchmark's PCC(ACG). Returns (best alpha, {alpha: score})."""
    from sklearn.linear_model import Ridge

    X = _as_float_tensor(train_features, "train_features").numpy().astype(np.float64)
    Y = _as_float_tensor(train_expression, "train_expression").numpy().astype(np.float64)
    groups = np.asarray(groups)
    if groups.shape[0] != X.shape[0]:
        raise ValueError(f"{groups.shape[0]} group labels for {X.shape[0]} training spots.")
    if len(np.unique(groups)) < 2:
        groups = np.random.default_rng(seed).integers(0, 3, size=X.shape[0])
    scores = {}
    for alpha in alphas:
        fold_scores = []
        for g in np.unique(groups):
            inner, outer = groups != g, groups == g
            scaler, pca, _ = _probe_pipeline(X[inner], n_components, seed)
            ridge = Ridge(alpha=float(alpha), solver="lsqr", max_iter=1000, random_state=seed)
            ridge.fit(pca.transform(scaler.transform(X[inner])), Y[inner])
            pred = ridge.predict(pca.transform(scaler.transform(X[outer])))
            fold_scores.append(_mean_gene_r(pred, Y[outer]))
        scores[float(alpha)] = float(np.mean(fold_scores))
    best = max(scores, key=scores.get)
    return best, scores


def ridge_probe_predict(
    train_features: Any,
    train_expression: Any,
    query_features: Any,
    n_components: int = HEST_PCA_COMPONENTS,
    alpha: float | str | None = None,
    seed: int = 0,
    groups: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """HEST's linear probe: StandardScaler → PCA(256) → Ridge, fitted on training spots only.

    alpha: None or "hest" = HEST-Benchmark's 100 / (components · genes); "cv" = chosen by
    `select_ridge_alpha` on the training spots (`groups` = their sections); or a number.
    HEST fits the ridge without intercept; after standardisation and PCA the training
    features are centred, so an intercept changes no coefficient (hence no Pearson r) — it only
    adds each gene's training mean, which MSE/MAE need to be meaningful. We fit it.
    Returns (predictions (Q, G) float32, details: components used, alpha, explained variance).
    """
    from sklearn.linear_model import Ridge

    X = _as_float_tensor(train_features, "train_features").numpy().astype(np.float64)
    Y = _as_float_tensor(train_expression, "train_expression").numpy().astype(np.float64)
    Q = _as_float_tensor(query_features, "query_features").numpy().astype(np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{X.shape[0]} training feature rows but {Y.shape[0]} expression rows.")
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f"query features have {Q.shape[1]} dims, training {X.shape[1]}.")
    # PCA cannot have more components than training spots or feature dims.
    scaler, pca, n_used = _probe_pipeline(X, n_components, seed)
    Z_train = pca.transform(scaler.transform(X))
    Z_query = pca.transform(scaler.transform(Q))
    details: dict[str, Any] = {}
    if alpha is None or alpha == "hest":
        alpha_value, details["alpha_rule"] = hest_ridge_alpha(n_used, Y.shape[1]), "hest"
    elif alpha == "cv":
        if groups is None:
            raise ValueError("alpha='cv' needs the training spots' groups (their sections).")
        alpha_value, details["alpha_cv_scores"] = select_ridge_alpha(
            X, Y, groups, n_components=n_components, seed=seed)
        details["alpha_rule"] = "leave-one-training-section-out CV, mean per-gene r"
    elif isinstance(alpha, int | float) and not isinstance(alpha, bool) and alpha > 0:
        alpha_value, details["alpha_rule"] = float(alpha), "given"
    else:
        raise ValueError(f"ridge alpha must be 'hest', 'cv' or a positive number; got {alpha!r}.")
    ridge = Ridge(alpha=alpha_value, fit_intercept=True, solver="lsqr", max_iter=1000,
                  random_state=seed).fit(Z_train, Y)
    details.update({
        "pca_components": n_used,
        "pca_components_requested": int(n_components),
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
        "ridge_alpha": float(alpha_value),
        "fit_intercept": True,
        "standardise": True,
    })
    return ridge.predict(Z_query).astype(np.float32), details


__all__ = [
    "BLEEP_ABLATION_OVERRIDES",
    "HEST_PCA_COMPONENTS",
    "RIDGE_ALPHA_GRID",
    "hest_ridge_alpha",
    "ridge_probe_predict",
    "select_ridge_alpha",
    "topk_mean_predict",
]
