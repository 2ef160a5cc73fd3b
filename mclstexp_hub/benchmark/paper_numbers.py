"""Numbers *reported* by the mclSTExp paper — quoted, never measured here.

Source: Min et al., "Multimodal contrastive learning for spatial gene expression prediction
using histology images", Briefings in Bioinformatics 2024 (headline table,
leave-one-section-out). They are kept apart from measured results everywhere (summary.json's
``paper_reported`` block, a separate table in summary.md) because they come from another
protocol: 32 HER2+ sections (12 cSCC, 9 Alex+10x), 90 training epochs, a GPU.

The figures themselves live once, in the dataset registry ``mclstexp_hub.presets``; this
module only shapes them into the block the benchmark writes.
"""

from __future__ import annotations

from typing import Any

from ..presets import PAPER_PROTOCOL, PAPER_SOURCE, get_preset, list_presets

PAPER_SPLIT = f"{PAPER_PROTOCOL}, {get_preset('her2st').n_sections} sections"


def _note() -> str:
    presets = list_presets()
    sections = "; ".join(f"{p.short}: {p.n_sections} sections" for p in presets)
    epochs = ", ".join(f"{p.epochs} ({p.short})" for p in presets)
    return (
        f"Reported in the paper, not measured here. {sections}; {PAPER_PROTOCOL}; "
        f"epochs {epochs}; mean over held-out sections."
    )


def paper_reported() -> dict[str, Any]:
    """A fresh copy of the paper's reported numbers (safe to mutate), built from the registry."""
    block: dict[str, Any] = {"source": PAPER_SOURCE, "split": PAPER_SPLIT, "note": _note()}
    for p in list_presets():
        block[p.name] = {
            "pcc_acg": p.paper_acg,
            "pcc_heg": p.paper_heg,
            "n_sections": p.n_sections,
            "n_genes": p.n_genes,
        }
    return block


__all__ = ["PAPER_SOURCE", "PAPER_SPLIT", "paper_reported"]
