"""Model zoo: one resumable recipe per dataset preset, raw data → benchmarked, published model.

See `recipes` (the `Recipe` / `Step` chain behind `mclstexp zoo build`) and docs/hub.md.
"""

from __future__ import annotations

from .recipes import STEP_NAMES, Recipe, Step, StepOutcome, ZooOptions, build_zoo_model, zoo_recipe

__all__ = ["STEP_NAMES", "Recipe", "Step", "StepOutcome", "ZooOptions", "build_zoo_model",
           "zoo_recipe"]
