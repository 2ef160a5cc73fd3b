"""Spot banks from patch datasets: every reference spot through the spot tower, fixed batching.

The spot tower attends over the spots of one batch, so a spot's bank embedding depends on its
batch companions. The batching is therefore part of the bank's definition and is recorded in
it: consecutive runs of `batch_size` spots (32, as the reference's evaluation loader) in
*dataset order*; the last run may be shorter. Images are never decoded here.
"""

from __future__ import annotations

from collections.abc import Sequence
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
            part = model.build_spot_bank(
                expression[start : start + step],
                positions[start : start + step],
                batch_size=batch_size,
                attach=False,
            )
            chunks.append(part.embeddings)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    sections = arrays["section"]
    metadata = {
        "batching": BANK_BATCHING.format(batch_size=batch_size),
        "bank_batch_size": batch_size,
        "spot_order": "dataset order",
        "built_with": "mclstexp_hub.training.bank.build_bank_from_dataset",
        "n_spots": n,
        "sections": list(dict.fromkeys(sections)),
        "source": source or meta.get("dataset_name") or meta.get("source"),
        "expression_transform": model_transform or transform,
        "expression_units": model.config.expression_units or meta.get("units"),
    }
    bank = SpotBank(
        embeddings=torch.cat(chunks),
        expression=expression,
        gene_names=list(model.config.gene_names),
        positions=positions,
        section_ids=sections,
        patient_ids=arrays["patient"],
        metadata=metadata,
    )
    if attach:
        model.attach_spot_bank(bank)
    return bank


__all__ = ["BANK_BATCHING", "build_bank_from_dataset", "check_dataset_genes"]
