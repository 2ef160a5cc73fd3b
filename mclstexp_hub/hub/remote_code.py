"""The Python files a checkpoint needs on the Hub so that `trust_remote_code=True` works.

A repository loads without our package installed only if every module named by its
`auto_map` (config and image processor) and `custom_pipelines` entries is in the repository,
together with everything those modules import relatively. This module computes that closure
and fills gaps from the installed package, so a push never publishes a checkpoint whose
remote code is incomplete.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "models" / "mclstexp"
"""The installed Hub-bound folder (`mclstexp_hub/models/mclstexp`): the modules that travel."""

HUB_MODULES = (
    "configuration_mclstexp",
    "modeling_mclstexp",
    "spot_bank_mclstexp",
    "pixels_mclstexp",
    "image_processing_mclstexp",
    "pipeline_mclstexp",
    "slide_io_mclstexp",
    "precision_mclstexp",
)
"""Modules written to travel to the Hub (relative imports of each other only)."""


def _module_of(reference: str | None) -> str | None:
    """`"repo--module.Class"` or `"module.Class"` → `"module"`."""
    if not reference:
        return None
    reference = reference.split("--", 1)[-1]
    return reference.rsplit(".", 1)[0] if "." in reference else None


def referenced_modules(files: Mapping[str, Path]) -> set[str]:
    """Modules named by config.json (`auto_map`, `custom_pipelines`) and the processor's `auto_map`."""
    modules: set[str] = set()
    for name in ("config.json", "preprocessor_config.json"):
        path = files.get(name)
        if path is None:
            continue
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}).") from exc
        for value in (data.get("auto_map") or {}).values():
            for ref in value if isinstance(value, list) else [value]:
                if _module_of(ref):
                    modules.add(_module_of(ref))
        for entry in (data.get("custom_pipelines") or {}).values():
            if _module_of(entry.get("impl")):
                modules.add(_module_of(entry["impl"]))
    return modules


def relative_imports(source: str) -> set[str]:
    """Top-level sibling modules imported with `from .x import ...` / `from . import x`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def complete_remote_code(files: dict[str, Path], fill_from: Path | None = PACKAGE_DIR) -> list[str]:
    """Add the missing modules of the remote-code closure to `files` (in place).

    Files already in the checkpoint win: they match its weights. Missing ones are taken from
    `fill_from` (the installed package; None: take nothing, only check). Returns the names
    added; a module found nowhere is an error that names it and who needs it.
    """
    added: list[str] = []
    needed_by: dict[str, str] = {m: "config" for m in referenced_modules(files)}
    queue = sorted(needed_by)
    seen: set[str] = set()
    while queue:
        module = queue.pop(0)
        if module in seen:
            continue
        seen.add(module)
        filename = f"{module}.py"
        if filename not in files:
            candidate = fill_from / filename if fill_from is not None else None
            if candidate is None or not candidate.is_file():
                raise ValueError(
                    f"remote code {filename} (needed by {needed_by[module]}) is not in the "
                    "checkpoint" + (f" nor in {fill_from}" if fill_from is not None else "")
                    + "; re-save the checkpoint with the package imported (`import "
                    "mclstexp_hub`) so that save_pretrained copies it."
                )
            files[filename] = candidate
            added.append(filename)
        for dep in sorted(relative_imports(Path(files[filename]).read_text(encoding="utf-8"))):
            needed_by.setdefault(dep, filename)
            if dep not in seen:
                queue.append(dep)
    return added


__all__ = ["HUB_MODULES", "PACKAGE_DIR", "complete_remote_code", "referenced_modules", "relative_imports"]
