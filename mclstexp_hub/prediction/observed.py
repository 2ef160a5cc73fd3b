"""Observed expression next to a prediction, in the checkpoint's units.

Raw counts (a spots × genes table, an `.h5ad`, or a Space Ranger matrix) are restricted to the
model's gene panel and transformed with the checkpoint's `expression_transform`, exactly as the
training data was, so predicted and observed values are comparable (and Pearson r meaningful).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def read_counts_table(path: str | Path) -> pd.DataFrame:
    """Raw counts, spots × genes, indexed by spot id.

    `.h5ad` (counts from `layers["counts"]` or `X`, spot ids = `obs_names`), a Space Ranger
    `outs/` folder (`filtered_feature_bc_matrix.h5`), or a delimited table (`.tsv[.gz]`,
    `.csv[.gz]`) whose first column is the spot id (her2st's `ST-cnts/*.tsv.gz` layout).
    """
    path = Path(path)
    if path.is_dir():
        from mclstexp_hub.data.readers.visium import read_10x_h5

        h5 = path / "filtered_feature_bc_matrix.h5"
        if not h5.is_file():
            raise FileNotFoundError(f"{h5} not found: --observed DIR must be a Space Ranger outs/.")
        matrix, barcodes, genes = read_10x_h5(h5)
        return pd.DataFrame.sparse.from_spmatrix(matrix, index=barcodes, columns=genes)
    if not path.is_file():
        raise FileNotFoundError(f"observed expression file not found: {path}")
    if path.suffix == ".h5ad":
        import anndata as ad

        adata = ad.read_h5ad(path)
        counts = adata.layers.get("counts", adata.X)
        dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        return pd.DataFrame(dense, index=adata.obs_names.astype(str), columns=adata.var_names.astype(str))
    name = path.name.lower()
    sep = "\t" if ".tsv" in name or ".txt" in name else ","
    try:
        table = pd.read_csv(path, sep=sep, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            EOFError) as exc:
        raise ValueError(f"{path}: cannot parse the counts table ({exc}).") from exc
    table.index = table.index.astype(str)
    return table


def observed_in_model_units(
    counts: pd.DataFrame,
    gene_names: list[str],
    transform: str | None,
    spot_ids: list[str],
    source: str = "observed counts",
) -> tuple[np.ndarray, np.ndarray]:
    """(observed (n_spots, G) float32 with NaN rows for unmatched spots, matched mask)."""
    from mclstexp_hub.data.preprocess import TRANSFORMS, normalize_expression

    if transform not in TRANSFORMS:
        raise ValueError(
            f"the checkpoint records expression_transform={transform!r}, so {source} cannot be "
            f"put in its units; known transforms: {list(TRANSFORMS)}."
        )
    columns = {str(c) for c in counts.columns}
    missing = [g for g in gene_names if g not in columns]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of the model's {len(gene_names)} genes are absent "
            f"(e.g. {missing[:8]}); the observed data must cover the model's gene panel "
            "(config.gene_names)."
        )
    index = pd.Index([str(i) for i in counts.index])
    position = pd.Series(np.arange(len(index)), index=index)
    position = position[~position.index.duplicated()]
    rows = position.reindex(spot_ids)
    matched = rows.notna().to_numpy()
    if not matched.any():
        raise ValueError(
            f"{source}: no spot id matches the predicted spots (e.g. predicted "
            f"{spot_ids[:3]} vs observed {list(index[:3])}); use the same spot ids (spot_id column)."
        )
    panel = counts[gene_names].iloc[rows[matched].astype(int).to_numpy()]
    values = panel.sparse.to_dense().to_numpy() if hasattr(panel, "sparse") and any(
        isinstance(t, pd.SparseDtype) for t in panel.dtypes) else panel.to_numpy()
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{source}: counts must be finite and non-negative (raw counts).")
    fractional = np.abs(values - np.round(values)) > 1e-6
    if fractional.any():
        example = float(values[fractional][0])
        raise ValueError(
            f"{source}: holds non-integer values (e.g. {example:g}) — already normalised or "
            "log-transformed? --observed needs raw counts; the checkpoint's transform "
            f"({transform}) is applied here."
        )
    out = np.full((len(spot_ids), len(gene_names)), np.nan, dtype=np.float32)
    out[matched] = normalize_expression(values, transform)
    return out, matched


__all__ = ["observed_in_model_units", "read_counts_table"]
