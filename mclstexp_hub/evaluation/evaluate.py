"""Evaluate a checkpoint on held-out sections of a patch dataset (`mclstexp evaluate`).

The checkpoint's own image tower embeds every patch of the chosen sections, its spot bank is
searched, and the retrieved expression is scored against the observed expression. Sections
whose spots are in the bank are refused by default: their own profiles would be retrieved
(a leak that makes any model look excellent).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import SectionMetrics, check_gene_lists, evaluate_section
from .report import write_section_reports


def predict_patches(
    model,
    patches: torch.Tensor,
    *,
    k: int | None = None,
    distance: str | None = None,
    weighting: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    precision: str = "auto",
) -> np.ndarray:
    """Expression (N, G) for uint8 (N, 3, H, W) patches: image tower → projection → retrieval.

    `precision` as `mclstexp predict --precision`: auto = bf16 autocast + channels-last on
    native-bf16 hardware, else fp32; the retrieval itself always runs in fp32. An ONNX export
    attached to `model` (`attach_onnx_tower`) runs the tower on the CPU when a runtime serves
    the precision (`onnx_tower_runtime`), as in predict.
    """
    from mclstexp_hub.models.mclstexp.precision_mclstexp import (
        onnx_tower_runtime,
        resolve_precision,
    )

    resolved = resolve_precision(precision, model.device)
    if onnx_tower_runtime(model, model.device, resolved):
        embeds = _onnx_embeds(model, patches, batch_size=batch_size, progress=progress,
                              precision=resolved)
    else:
        from mclstexp_hub.training.features import compute_image_features

        features = compute_image_features(model, patches, 1, batch_size=batch_size,
                                          progress=progress, bf16=resolved == "bf16")[0]
        with torch.no_grad():
            embeds = model.get_image_features(image_features=features).pooler_output
    with torch.no_grad():
        out = model.predict_expression(image_embeds=embeds.float(), k=k, distance=distance,
                                       weighting=weighting)
    return out.expression.numpy()


def _onnx_embeds(model, patches: torch.Tensor, *, batch_size: int, progress: bool,
                 precision: str) -> torch.Tensor:
    """Image embeddings of uint8 (N, 3, H, W) patches from the attached ONNX tower at the
    resolved `precision`."""
    from tqdm.auto import tqdm

    from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size!r}.")
    tower, scaling = model.onnx_image_tower, model.config.pixel_scaling
    array = patches.numpy() if isinstance(patches, torch.Tensor) else np.asarray(patches)
    out = []
    for start in tqdm(range(0, len(array), batch_size),
                      desc=f"image tower ({tower.runtime(precision)}, {precision})",
                      unit="batch", disable=not progress):
        out.append(tower.run(scale_pixel_values(array[start:start + batch_size], scaling), precision))
    return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, model.config.projection_dim)


def _sections_seen_by_pretraining(model_path: str | os.PathLike, sections: Sequence[str]) -> list[str]:
    """Of `sections`, those whose tiles pretrained the checkpoint's image tower (`mclstexp
    pretrain`, as recorded in a local folder's training_info.json); [] when none or unknown."""
    import json

    from mclstexp_hub.hub.checkpoint import TRAINING_INFO_FILE

    path = Path(os.fspath(model_path)) / TRAINING_INFO_FILE
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("pretrained_encoder_record")
    except (ValueError, AttributeError):
        return []
    seen = set((record or {}).get("sections") or ())
    return sorted(s for s in sections if s in seen)


def evaluate_checkpoint(
    model_path: str | os.PathLike,
    dataset: str | os.PathLike,
    sections: Sequence[str] | None,
    out_dir: str | os.PathLike,
    *,
    k: int | None = None,
    distance: str | None = None,
    weighting: str | None = None,
    batch_size: int = 64,
    allow_bank_overlap: bool = False,
    n_map_genes: int = 4,
    progress: bool = True,
    overwrite: bool = False,
    precision: str = "auto",
    backend: str = "auto",
) -> tuple[list[SectionMetrics], dict[str, Path]]:
    """Predict and score `sections` of `dataset` with the checkpoint at `model_path`.

    `out_dir` is written whole or not at all (staged, then renamed); an existing one is
    replaced only with `overwrite` and only when it holds an evaluation of ours.
    `backend`: the image tower's runtime, as `mclstexp predict --backend` (auto = the folder's
    valid ONNX export in fp32 on the CPU, else torch); recorded in metrics.json.
    """
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import attach_onnx_tower, check_backend
    from mclstexp_hub.models.mclstexp.precision_mclstexp import (
        EXPORT_BACKENDS,
        export_runtime,
        onnx_tower_runtime,
        resolve_precision,
    )
    from mclstexp_hub.outputs import check_output, replace_folder, staging
    from mclstexp_hub.training.torch_dataset import SpotPatchDataset

    for option, value in (("--k", k), ("--batch-size", batch_size)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{option} must be a positive integer; got {value}.")
    if n_map_genes < 0:
        raise ValueError(f"--n-map-genes must be >= 0 (0: no gene maps); got {n_map_genes}.")
    check_backend(backend)
    resolved = resolve_precision(precision)
    local = Path(os.fspath(model_path)).is_dir()
    if backend in EXPORT_BACKENDS and not local:
        raise ValueError(f"--backend {backend} needs a local checkpoint folder holding "
                         "image_tower.onnx (`mclstexp onnx DIR`); download the model first.")
    out_dir = check_output(out_dir, overwrite=overwrite, inputs=[model_path, dataset],
                           is_ours=is_evaluation_folder, what="evaluation folder")
    model = MclSTExpModel.from_pretrained(os.fspath(model_path)).eval()
    tower = attach_onnx_tower(model, model_path, backend) if local else {}
    on_onnx = onnx_tower_runtime(model, model.device, resolved)
    if backend in EXPORT_BACKENDS and not on_onnx:
        why = export_runtime(backend, resolved)[1]
        raise ValueError(f"--backend {backend} cannot run the export at --precision {precision} "
                         f"(= {resolved}): {why}. Pass --precision fp32 or --backend torch.")
    tower["image_tower_backend"] = on_onnx or "torch"
    if model.spot_bank is None:
        raise ValueError(
            f"{model_path} has no spot_bank.safetensors, so it cannot predict expression; build "
            "one with `mclstexp bank build CKPT --dataset ...`."
        )
    meta = load_dataset_metadata(dataset)
    check_gene_lists(model.config.gene_names, meta["gene_names"])
    transform, model_transform = meta.get("transform"), model.config.expression_transform
    if transform and model_transform and transform != model_transform:
        raise ValueError(
            f"{dataset}: expression transform {transform!r} differs from the model's "
            f"{model_transform!r}; MSE/MAE would compare different units. Rebuild the dataset "
            f"with `--transform {model_transform}`."
        )
    sections = list(sections or meta["sections"])
    if not sections:
        raise ValueError(f"{dataset}: no sections to evaluate.")
    if k is not None and k > len(model.spot_bank):
        raise ValueError(
            f"--k {k} exceeds the {len(model.spot_bank)} spots of {model_path}'s spot bank; pass "
            f"--k <= {len(model.spot_bank)}."
        )
    unknown = sorted(set(sections) - set(meta["sections"]))
    if unknown:
        raise ValueError(f"--sections {unknown} are not in {dataset} (it has {meta['sections']}).")
    in_bank = sorted(set(sections) & set(model.spot_bank.section_ids))
    if in_bank and not allow_bank_overlap:
        raise ValueError(
            f"sections {in_bank} are in the model's spot bank (its training/reference spots): "
            "evaluating on them retrieves their own expression. Evaluate on held-out sections, "
            "or pass --allow-bank-overlap to score them anyway (the result is then not a "
            "held-out estimate)."
        )
    seen = _sections_seen_by_pretraining(model_path, sections)
    if seen and not allow_bank_overlap:
        raise ValueError(
            f"sections {seen}: the model's image tower was pretrained on their tissue tiles "
            "(training_info.json pretrained_encoder_record, `mclstexp pretrain`), so they are not "
            "held out. Evaluate on other sections, or pass --allow-bank-overlap to score them "
            "anyway (the result is then not a held-out estimate)."
        )
    ds = load_st_dataset(dataset, sections=sections)
    spots = SpotPatchDataset(ds, progress=progress)
    spot_sections = np.asarray(spots.sections)
    predicted = predict_patches(model, spots.patches, k=k, distance=distance, precision=precision,
                                weighting=weighting, batch_size=batch_size, progress=progress)
    observed = spots.expression.numpy()
    positions = spots.positions.numpy()
    results, maps = [], {}
    for section in sections:
        rows = np.flatnonzero(spot_sections == section)
        if rows.size == 0:
            raise ValueError(f"{dataset}: section {section} has no spots (empty section).")
        results.append(evaluate_section(predicted[rows], observed[rows], meta["gene_names"],
                                        predicted_genes=model.config.gene_names, section=section))
        maps[section] = (positions[rows], observed[rows], predicted[rows])
    extra: dict[str, Any] = {
        "model": os.fspath(model_path),
        "dataset": os.fspath(dataset),
        "sections": sections,
        "retrieval": {"k": int(k if k is not None else model.config.retrieval_k),
                      "distance": distance or model.config.retrieval_distance,
                      "weighting": weighting or model.config.retrieval_weighting,
                      "bank_spots": len(model.spot_bank)},
        "sections_in_bank": in_bank,
        "sections_seen_by_pretraining": seen,
        "expression_units": model.config.expression_units or meta.get("units"),
        "precision": resolved,
        "image_tower": tower,
    }
    with staging(out_dir.parent, f".{out_dir.name}.staging-") as stage:
        staged = write_section_reports(results, stage, maps=maps, extra=extra,
                                       n_map_genes=n_map_genes)
        replace_folder(stage, out_dir)
    paths = {role: out_dir / p.relative_to(stage) for role, p in staged.items()}
    return results, paths


def is_evaluation_folder(path: Path) -> bool:
    """A folder written by `mclstexp evaluate` (metrics.json naming the model and dataset)."""
    import json

    try:
        payload = json.loads((Path(path) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(payload, dict) and {"model", "dataset", "per_section"} <= set(payload)


__all__ = ["evaluate_checkpoint", "is_evaluation_folder", "predict_patches"]
