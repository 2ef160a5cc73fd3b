"""Numbers *reported* by the mclSTExp paper — quoted, never measured here.

Source: Min et al., "Multimodal contrastive learning for spatial gene expression prediction
using histology images", Briefings in Bioinformatics 2024 (headline table,
leave-one-section-out). They are kept apart from measured results everywhere (summary.json's
``paper_reported`` block, a separate table in summary.md) because they come from another
protocol: 32 HER2+ sections (12 cSCC, 9 Alex+10x), 90 training epochs, a GPU.
"""

from __future__ import annotations

import copy

PAPER_SOURCE = "Min et al., Briefings in Bioinformatics 2024"
PAPER_SPLIT = "leave-one-section-out, 32 sections"

_PAPER_REPORTED = {
    "source": PAPER_SOURCE,
    "split": PAPER_SPLIT,
    "note": (
        "Reported in the paper, not measured here. HER2+: 32 sections; cSCC: 12; Alex+10x: 9; "
        "leave-one-section-out; 90 epochs (15 for Alex+10x); mean over held-out sections."
    ),
    "her2st": {"pcc_acg": 0.2304, "pcc_heg": 0.3866, "n_sections": 32, "n_genes": 785},
    "cscc": {"pcc_acg": 0.3235, "pcc_heg": 0.4261, "n_sections": 12, "n_genes": 171},
    "alex10x": {"pcc_acg": 0.1949, "pcc_heg": 0.3611, "n_sections": 9, "n_genes": 685},
}


def paper_reported() -> dict:
    """A fresh copy of the paper's reported numbers (safe to mutate)."""
    return copy.deepcopy(_PAPER_REPORTED)


__all__ = ["PAPER_SOURCE", "PAPER_SPLIT", "paper_reported"]
