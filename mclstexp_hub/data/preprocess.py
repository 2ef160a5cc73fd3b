"""Expression targets: gene panel selection and the expression transform (GUIDE.md).

* Panel — either an ordered gene list (``read_gene_panel``; the paper's published panels are
  what makes results comparable to it) or the written recipe (``select_genes``): genes shared by
  all sections → the top-``n_top`` highly variable genes of each section (scanpy, union over
  sections) → minus genes expressed (count > 0) in fewer than ``min_spots`` spots over all
  sections. The recipe does not reproduce the published 785 HER2+ genes (see docs/data.md).
* Transform — applied to the panel's counts with the total taken over the panel only:

  ``log10_cp10k_panel`` (default, the reference code via scprep; the paper's numbers):
      log10(1 + 1e4 · count / panel total)
  ``ln_cpm_panel`` (the paper's text): ln(1 + 1e6 · count / panel total)

  Spots whose panel total is 0 become all-zero rows, never NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import DataError, preview
from .safe_npy import load_npy_safely
from .transforms import DEFAULT_TRANSFORM, HVG_FLAVORS, TRANSFORMS

logger = logging.getLogger(__name__)


def read_gene_panel(path: str | Path) -> list[str]:
    """Ordered gene symbols from a ``.txt`` (one per line; blank lines and ``#`` ignored) or
    ``.npy`` file. Duplicates are an error (a panel fixes the output columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene panel file not found: {path} (one gene symbol per line)")
    if path.suffix == ".npy":
        try:
            array = load_npy_safely(path)  # never runs pickles
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"gene panel {exc}") from None
        if array.dtype.kind not in "OUS":
            raise DataError(
                f"{path}: the gene panel holds {array.dtype} values, not gene symbols; save the "
                "symbols as strings (or as text, one per line)"
            )
        genes = [g.decode() if isinstance(g, bytes) else str(g) for g in array.ravel()]
        genes = [g.strip() for g in genes if g.strip()]
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: the gene panel is not UTF-8 text (byte {exc.start} is "
                f"{exc.object[exc.start:exc.start + 1]!r}); pass a text file with one gene "
                "symbol per line (or a .npy of strings)"
            ) from None
        if "\x00" in text:
            raise DataError(
                f"{path}: the gene panel holds NUL bytes (a binary file?); pass a text file "
                "with one gene symbol per line (or a .npy of strings)"
            )
        lines = text.splitlines()
        genes = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not genes:
        raise DataError(
            f"{path}: the gene panel is empty; list one gene symbol per line (blank lines and "
            "'#' comments are ignored)"
        )
    seen: set[str] = set()
    dup = [g for g in genes if g in seen or seen.add(g)]
    if dup:
        raise DataError(f"{path}: duplicate gene(s) {preview(dup)} in the panel; list each once")
    return genes


def shared_genes(adatas: Sequence[ad.AnnData]) -> list[str]:
    """Genes present in every section, in the first section's order."""
    if not adatas:
        raise DataError("no sections given")
    common = set(adatas[0].var_names)
    for a in adatas[1:]:
        common &= set(a.var_names)
    return [g for g in adatas[0].var_names if g in common]


def section_hvgs(adata: ad.AnnData, genes: Sequence[str], n_top: int, flavor: str) -> set[str]:
    """Top-``n_top`` highly variable genes of one section among ``genes`` (scanpy)."""
    import scanpy as sc

    if flavor not in HVG_FLAVORS:
        raise DataError(f"HVG flavor {flavor!r} unknown; choose one of {HVG_FLAVORS}")
    sub = ad.AnnData(X=sp.csr_matrix(adata[:, list(genes)].X, dtype=np.float32))
    sub.var_names = list(genes)
    if flavor != "seurat_v3":  # seurat / cell_ranger expect log-normalised data
        sc.pp.normalize_total(sub, target_sum=1e4)
        sc.pp.log1p(sub)
    sc.pp.highly_variable_genes(sub, n_top_genes=min(n_top, len(genes)), flavor=flavor)
    return set(sub.var_names[sub.var["highly_variable"].to_numpy()])


def expressing_spots(adatas: Sequence[ad.AnnData], genes: Sequence[str]) -> np.ndarray:
    """Number of spots with a count > 0, per gene, summed over all sections."""
    total = np.zeros(len(genes), dtype=np.int64)
    for a in adatas:
        X = sp.csr_matrix(a[:, list(genes)].X)
        total += np.asarray((X > 0).sum(axis=0)).ravel()
    return total


def select_genes(
    adatas: Sequence[ad.AnnData],
    n_top: int = 1000,
    min_spots: int = 1000,
    flavor: str = "seurat",
) -> list[str]:
    """The written recipe: shared genes → union of per-section top-``n_top`` HVGs → genes
    expressed in ≥ ``min_spots`` spots over all sections (order: first section's).
    ``n_top`` must be ≥ 1; ``min_spots`` 0 keeps every HVG."""
    if isinstance(n_top, bool) or not isinstance(n_top, (int, np.integer)) or n_top < 1:
        raise DataError(f"n_top (--n-top) {n_top!r}: must be an integer ≥ 1 (e.g. 1000)")
    if isinstance(min_spots, bool) or not isinstance(min_spots, (int, np.integer)) or min_spots < 0:
        raise DataError(f"min_spots (--min-spots) {min_spots!r}: must be an integer ≥ 0")
    genes = shared_genes(adatas)
    if not genes:
        raise DataError("the sections share no gene symbol; check that they use the same naming")
    hvg: set[str] = set()
    for a in adatas:
        hvg |= section_hvgs(a, genes, n_top, flavor)
    candidates = [g for g in genes if g in hvg]
    counts = expressing_spots(adatas, candidates)
    selected = [g for g, n in zip(candidates, counts, strict=True) if n >= min_spots]
    if not selected:
        raise DataError(
            f"no gene is expressed in ≥ {min_spots} spots over the {len(adatas)} sections; "
            "lower min_spots (--min-spots) for small data sets"
        )
    return selected


def normalize_expression(
    counts: np.ndarray | sp.spmatrix, method: str = DEFAULT_TRANSFORM
) -> np.ndarray:
    """Transformed dense float32 expression from panel counts (spots × panel genes)."""
    if method not in TRANSFORMS:
        raise DataError(f"transform {method!r} unknown; choose one of {list(TRANSFORMS)}")
    X = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    X = X.astype(np.float64)
    total = X.sum(axis=1, keepdims=True)
    scale = 1e4 if method == "log10_cp10k_panel" else 1e6
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(total > 0, X / np.where(total > 0, total, 1.0) * scale, 0.0)
    out = np.log10(1 + scaled) if method == "log10_cp10k_panel" else np.log1p(scaled)
    return out.astype(np.float32)


def preprocess_sections(
    adatas: Sequence[ad.AnnData],
    genes: Sequence[str] | None = None,
    transform: str = DEFAULT_TRANSFORM,
    fill_missing: bool = False,
    *,
    gene_panel_source: str | None = None,
    n_top: int = 1000,
    min_spots: int = 1000,
    flavor: str = "seurat",
) -> list[ad.AnnData]:
    """Panel expression per section: X = dense float32 transformed, layers["counts"] = raw.

    ``genes`` None → the recipe (``select_genes``). With a panel, genes absent from a section
    raise an error listing them, unless ``fill_missing`` — then they are zero-filled and listed in
    ``uns["mclstexp_preprocessing"]["missing_genes_filled"]`` (per section).
    """
    if transform not in TRANSFORMS:
        raise DataError(f"transform {transform!r} unknown; choose one of {list(TRANSFORMS)}")
    if not adatas:
        raise DataError("no sections to preprocess")
    if genes is None:
        genes = select_genes(adatas, n_top=n_top, min_spots=min_spots, flavor=flavor)
        source = (
            f"recipe: shared genes, union of per-section top-{n_top} HVGs (scanpy {flavor}), "
            f"expressed in >= {min_spots} spots"
        )
    else:
        genes = list(genes)
        source = gene_panel_source or "user-supplied gene list"
    out = []
    for a in adatas:
        section = str(a.obs["section"].iloc[0]) if "section" in a.obs else "?"
        present = set(a.var_names)
        missing = [g for g in genes if g not in present]
        if missing and not fill_missing:
            raise DataError(
                f"section {section}: {len(missing)} panel gene(s) absent from the counts: "
                f"{preview(missing, 30)}. Use a panel that matches the data, or pass "
                "fill_missing=True (--fill-missing-genes) to zero-fill them (reported)"
            )
        if missing:
            logger.warning("section %s: zero-filled %d missing genes", section, len(missing))
        X = sp.csr_matrix(a.X, dtype=np.float32)
        col = {g: i for i, g in enumerate(a.var_names)}
        idx = np.array([col.get(g, -1) for g in genes])
        panel = np.zeros((a.n_obs, len(genes)), dtype=np.float32)
        have = idx >= 0
        if have.any():
            panel[:, have] = X[:, idx[have]].toarray()
        if not panel.any():
            raise DataError(
                f"section {section}: all {len(genes)} panel genes have zero counts in all "
                f"{a.n_obs} spots, so it carries no expression to learn from; check its counts "
                "file (or the panel), or leave the section out of --sections"
            )
        new = ad.AnnData(
            X=normalize_expression(panel, transform),
            obs=a.obs.copy(),
            var=pd.DataFrame(index=pd.Index(list(genes))),
            obsm={k: v.copy() for k, v in a.obsm.items()},
            uns=dict(a.uns),
        )
        new.layers["counts"] = panel
        new.uns["mclstexp_preprocessing"] = {
            "transform": transform,
            "units": TRANSFORMS[transform],
            "gene_panel_source": source,
            "n_genes": len(genes),
            "missing_genes_filled": missing,
            "zero_total_spots": [str(s) for s in a.obs_names[panel.sum(axis=1) == 0]],
        }
        out.append(new)
    return out
