"""Names of the expression transforms and HVG flavours (pure Python, no data stack).

Kept apart from `preprocess` (which imports anndata/scanpy) so that the command line can offer
them as choices without loading the data stack; `preprocess` re-exports them.
"""

from __future__ import annotations

# name -> formula, applied to the panel's counts with the total taken over the panel only
TRANSFORMS: dict[str, str] = {
    "log10_cp10k_panel": "log10(1 + 1e4 * count / panel total)",
    "ln_cpm_panel": "ln(1 + 1e6 * count / panel total)",
}
DEFAULT_TRANSFORM = "log10_cp10k_panel"
HVG_FLAVORS = ("seurat", "cell_ranger", "seurat_v3")

__all__ = ["DEFAULT_TRANSFORM", "HVG_FLAVORS", "TRANSFORMS"]
