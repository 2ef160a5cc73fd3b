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

from mclstexp_hub.spot_bank_mclstexp import exact_cosine_topk

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


def ridge_probe_predict(
    train_features: Any,
    train_expression: Any,
    query_features: Any,
    n_components: int = HEST_PCA_COMPONENTS,
    alpha: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """HEST's linear probe: StandardScaler → PCA(256) → Ridge, fitted on training spots only.

    HEST fits the ridge without intercept; after standardisation and PCA the training
    features are centred, so an intercept changes no coefficient (hence no Pearson r) — it only
    adds each gene's training mean, which MSE/MAE need to be meaningful. We fit it.
    Returns (predictions (Q, G) float32, details: components used, alpha, explained variance).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X = _as_float_tensor(train_features, "train_features").numpy().astype(np.float64)
    Y = _as_float_tensor(train_expression, "train_expression").numpy().astype(np.float64)
    Q = _as_float_tensor(query_features, "query_features").numpy().astype(np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{X.shape[0]} training feature rows but {Y.shape[0]} expression rows.")
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f"query features have {Q.shape[1]} dims, training {X.shape[1]}.")
    # PCA cannot have more components than training spots or feature dims.
    n_used = int(min(n_components, X.shape[0], X.shape[1]))
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=n_used, random_state=seed).fit(scaler.transform(X))
    Z_train = pca.transform(scaler.transform(X))
    Z_query = pca.transform(scaler.transform(Q))
    alpha = float(alpha if alpha is not None else hest_ridge_alpha(n_used, Y.shape[1]))
    ridge = Ridge(alpha=alpha, fit_intercept=True, solver="lsqr", max_iter=1000,
                  random_state=seed).fit(Z_train, Y)
    details = {
        "pca_components": n_used,
        "pca_components_requested": int(n_components),
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
        "ridge_alpha": alpha,
        "fit_intercept": True,
        "standardise": True,
    }
    return ridge.predict(Z_query).astype(np.float32), details


__all__ = [
    "BLEEP_ABLATION_OVERRIDES",
    "HEST_PCA_COMPONENTS",
    "hest_ridge_alpha",
    "ridge_probe_predict",
    "topk_mean_predict",
]
