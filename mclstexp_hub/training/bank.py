"""Spot banks from patch datasets: every reference spot through the spot tower, fixed batching.

The spot tower attends over the spots of one batch, so a spot's bank embedding depends on its
batch companions. The batching is therefore part of the bank's definition and is recorded in
it: consecutive runs of `batch_size` spots (32, as the reference's evaluation loader) in
*dataset order*; the last run may be shorter. Images are never decoded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models.mclstexp.modeling_mclstexp import DEFAULT_BANK_BATCH_SIZE
from ..models.mclstexp.spot_bank_mclstexp import SpotBank
from .torch_dataset import dataset_arrays

# Spots embedded per call (a whole number of batches), for the progress bar; no effect on values.
SUPER_CHUNK_SPOTS = 2048
BANK_BATCHING = "consecutive runs of {batch_size} spots in dataset order (last run may be shorter)"


def check_dataset_genes(model: Any, dataset_genes: Sequence[str] | None, n_columns: int) -> None:
    """Refuse data whose genes (names, or at least count) differ from the model's."""
    model_genes = list(model.config.gene_names)
    if dataset_genes is not None and list(dataset_genes) != model_genes:
        missing = [g for g in model_genes if g not in set(dataset_genes)]
        raise ValueError(
            f"The dataset's genes do not match the model's gene_names: dataset has "
            f"{len(dataset_genes)} genes, model {len(model_genes)}"
            + (f"; {len(missing)} model genes are absent from the dataset, e.g. {missing[:5]}"
               if missing else "; same genes in a different order")
            + ". Rebuild the dataset with the model's panel (`mclstexp data build --genes` with "
            "the checkpoint's gene list)."
        )
    if n_columns != len(model_genes):
        raise ValueError(
            f"The dataset's expression has {n_columns} genes but the model expects "
            f"{len(model_genes)} (config.gene_names); rebuild the dataset with the model's panel."
        )


def build_bank_from_dataset(
    model: Any,
    dataset: Any,
    batch_size: int = DEFAULT_BANK_BATCH_SIZE,
    progress: bool = True,
    *,
    gene_names: Sequence[str] | None = None,
    dataset_metadata: dict[str, Any] | None = None,
    source: str | None = None,
    attach: bool = True,
    precision: str = "fp32",
) -> SpotBank:
    """Embed every spot of `dataset` (a patch `datasets.Dataset`) and return the bank.

    gene_names / dataset_metadata (the dataset's `mclstexp_dataset.json`) are checked against
    the model: genes must match exactly and the expression transform must be the model's.
    With `attach` the bank becomes the model's retrieval bank.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"bank batch_size must be a positive integer; got {batch_size!r}.")
    meta = dict(dataset_metadata or {})
    if gene_names is None and meta.get("gene_names"):
        gene_names = meta["gene_names"]
    arrays = dataset_arrays(dataset)
    expression, positions = arrays["expression"], arrays["positions"]
    check_dataset_genes(model, gene_names, int(expression.shape[1]))
    transform = meta.get("transform")
    model_transform = model.config.expression_transform
    if transform and model_transform and transform != model_transform:
        raise ValueError(
            f"The dataset's expression transform {transform!r} differs from the model's "
            f"{model_transform!r} (config.expression_transform); the bank's expression would be "
            "in other units. Rebuild the dataset with `--transform " + str(model_transform) + "`."
        )
    return bank_from_arrays(
        model, expression, positions, arrays["section"], arrays["patient"],
        batch_size=batch_size, progress=progress, attach=attach,
        built_with="mclstexp_hub.training.bank.build_bank_from_dataset",
        source=source or meta.get("dataset_name") or meta.get("source"),
        fallback_units=meta.get("units"), fallback_transform=transform, precision=precision,
    )


def bank_from_arrays(
    model: Any,
    expression: torch.Tensor,
    positions: torch.Tensor,
    sections: Sequence[str],
    patients: Sequence[str],
    *,
    batch_size: int = DEFAULT_BANK_BATCH_SIZE,
    progress: bool = True,
    attach: bool = True,
    built_with: str,
    source: str | None = None,
    fallback_units: str | None = None,
    fallback_transform: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> SpotBank:
    """The one embedding + recording step of every bank path (dataset, expression alone).

    Spots are embedded in the given order, in consecutive runs of `batch_size`; sections,
    patients, batching, units and the spot tower's precision (`auto`/`fp32`/`bf16`, resolved
    as for prediction; embeddings are stored in fp32 either way) are recorded in the bank.
    """
    from ..models.mclstexp.precision_mclstexp import autocast, resolve_precision

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"bank batch_size must be a positive integer; got {batch_size!r}.")
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    n = int(expression.shape[0])
    # Super-chunks are whole multiples of batch_size, so the runs of batch_size spots (the
    # attention sequences) are exactly those of one call over all spots.
    step = batch_size * max(1, SUPER_CHUNK_SPOTS // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="spot bank", unit="spot", leave=False)
    chunks = []
    try:
        for start in range(0, n, step):
            with autocast(resolved, device):
                part = model.build_spot_bank(
                    expression[start : start + step],
                    positions[start : start + step],
                    batch_size=batch_size,
                    attach=False,
                )
            chunks.append(part.embeddings.float())
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    sections = [str(s) for s in sections]
    metadata = {
        "batching": BANK_BATCHING.format(batch_size=batch_size),
        "bank_batch_size": batch_size,
        "spot_order": "dataset order",
        "built_with": built_with,
        "n_spots": n,
        "sections": list(dict.fromkeys(sections)),
        "source": source,
        "expression_transform": model.config.expression_transform or fallback_transform,
        "expression_units": model.config.expression_units or fallback_units,
        "precision": resolved,
    }
    metadata.update(extra_metadata or {})
    bank = SpotBank(
        embeddings=torch.cat(chunks),
        expression=expression,
        gene_names=list(model.config.gene_names),
        positions=positions,
        section_ids=sections,
        patient_ids=[str(p) for p in patients],
        metadata=metadata,
    )
    if attach:
        model.attach_spot_bank(bank)
    return bank


def build_bank_from_sections(
    model: Any,
    adatas: Sequence[Any],
    batch_size: int = DEFAULT_BANK_BATCH_SIZE,
    progress: bool = True,
    *,
    source: str | None = None,
    attach: bool = True,
    built_with: str = "mclstexp_hub.training.bank.build_bank_from_sections",
    precision: str = "fp32",
) -> SpotBank:
    """A bank from preprocessed sections (`preprocess_sections` output): no images needed.

    X must be the model's panel in the model's transform (checked through
    `uns["mclstexp_preprocessing"]` where present); positions are obs array_x/array_y. Spots
    keep the sections' order and each section's spot order, as a patch dataset built from the
    same sections stores them, so the bank equals the one `build_bank_from_dataset` makes.
    """
    import numpy as np

    if not adatas:
        raise ValueError("build_bank_from_sections: no sections given.")
    expressions, positions, sections, patients = [], [], [], []
    model_transform = model.config.expression_transform
    for a in adatas:
        name = str(a.obs["section"].iloc[0]) if "section" in a.obs and a.n_obs else "?"
        check_dataset_genes(model, [str(g) for g in a.var_names], int(a.n_vars))
        transform = (a.uns.get("mclstexp_preprocessing") or {}).get("transform")
        if transform and model_transform and transform != model_transform:
            raise ValueError(
                f"section {name}: expression transform {transform!r} differs from the model's "
                f"{model_transform!r} (config.expression_transform); preprocess with "
                f"transform={model_transform!r}."
            )
        missing = [c for c in ("array_x", "array_y", "section", "patient") if c not in a.obs]
        if missing:
            raise ValueError(f"section {name}: obs lacks {missing}; read it with a reader.")
        X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
        expressions.append(np.asarray(X, dtype=np.float32))
        positions.append(a.obs[["array_x", "array_y"]].to_numpy(dtype=np.int64))
        sections += a.obs["section"].astype(str).tolist()
        patients += a.obs["patient"].astype(str).tolist()
    expression = torch.from_numpy(np.ascontiguousarray(np.concatenate(expressions)))
    if not torch.isfinite(expression).all():
        raise ValueError("The sections' expression contains NaN or inf values.")
    units = (adatas[0].uns.get("mclstexp_preprocessing") or {}).get("units")
    return bank_from_arrays(
        model, expression, torch.from_numpy(np.concatenate(positions)), sections, patients,
        batch_size=batch_size, progress=progress, attach=attach, built_with=built_with,
        source=source, fallback_units=units, precision=precision,
    )


def read_expression_sections(
    kind: str,
    data_dir: str | Path,
    gene_names: Sequence[str],
    transform: str,
    sections: Sequence[str] | None = None,
    *,
    exclude_sections: Sequence[str] = (),
    exclude_patients: Sequence[str] = (),
    fill_missing: bool = False,
) -> tuple[list[Any], dict[str, Any]]:
    """Sections with counts + spot positions (no images needed), read by reader `kind` and
    preprocessed to `gene_names` in `transform`: (processed AnnDatas, dropped-spot notes).

    Sections default to every section the reader lists, with or without an image."""
    from ..data.preprocess import preprocess_sections
    from ..data.readers import reader_factory

    reader = reader_factory(kind)
    names = list(sections) if sections else reader.list_sections(data_dir)
    if exclude_sections:
        names = [s for s in names if s not in set(exclude_sections)]
    if not names:
        raise ValueError(f"{data_dir}: no {kind} section left to read.")
    adatas = reader.read(data_dir, names)
    if exclude_patients:
        drop = set(map(str, exclude_patients))
        adatas = [a for a in adatas if str(a.obs["patient"].iloc[0]) not in drop]
    if not adatas:
        raise ValueError(f"{data_dir}: no {kind} section left for the bank.")
    dropped = {}
    for a in adatas:
        info = next(iter(a.uns["spatial"].values()))["metadata"].get("dropped_spots") or {}
        if info.get("spots_without_counts") or info.get("counts_without_spot"):
            dropped[str(a.obs["section"].iloc[0])] = info
    processed = preprocess_sections(adatas, list(gene_names), transform, fill_missing,
                                    gene_panel_source="the checkpoint's gene_names")
    return processed, dropped


def build_bank_from_expression(
    model: Any,
    kind: str,
    data_dir: str | Path,
    sections: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BANK_BATCH_SIZE,
    progress: bool = True,
    *,
    exclude_sections: Sequence[str] = (),
    exclude_patients: Sequence[str] = (),
    fill_missing: bool = False,
    attach: bool = True,
    precision: str = "fp32",
) -> SpotBank:
    """A bank from raw counts + spot positions alone (no images): reader → model's panel.

    `kind` is a reader (`reader_factory`); sections default to every section the reader lists,
    with or without an image. Expression is preprocessed with `config.gene_names` and
    `config.expression_transform` (`read_expression_sections`), then embedded as
    `build_bank_from_sections`.
    """
    transform = model.config.expression_transform
    if not transform:
        raise ValueError(
            "The checkpoint records no expression_transform, so expression from counts cannot "
            "be put in its units; build the bank from a patch dataset (--dataset) instead."
        )
    processed, dropped = read_expression_sections(
        kind, data_dir, model.config.gene_names, transform, sections,
        exclude_sections=exclude_sections, exclude_patients=exclude_patients,
        fill_missing=fill_missing)
    bank = build_bank_from_sections(
        model, processed, batch_size, progress, source=f"{kind}:{data_dir}", attach=attach,
        built_with="mclstexp_hub.training.bank.build_bank_from_expression", precision=precision,
    )
    bank.metadata["from_expression_only"] = True
    bank.metadata["reader"] = kind
    if dropped:
        bank.metadata["dropped_spots"] = dropped
    return bank


__all__ = [
    "BANK_BATCHING",
    "bank_from_arrays",
    "build_bank_from_dataset",
    "build_bank_from_expression",
    "build_bank_from_sections",
    "check_dataset_genes",
    "read_expression_sections",
]
