"""`mclstexp predict` without PyTorch: the image tower's ONNX export + NumPy retrieval.

Importing torch, torchvision and transformers costs ≈ 8–10 s on a 2-core CPU before a single
patch is read (`python -X importtime`; torch alone 3.1 s, torch._dynamo via torchvision 3 s,
transformers' pipeline machinery 3 s) — as long as the image tower takes for ~200 spots. When a
checkpoint folder carries a valid ONNX export of its tower (`mclstexp onnx DIR`) and the run is
on the CPU, nothing of PyTorch is needed: the export runs in ONNX Runtime (fp32) or OpenVINO
(bf16, on CPUs with native bf16; `precision_mclstexp.export_plan`), the spot bank
is read with safetensors' NumPy reader, and retrieval is the same NumPy code `SpotBank.retrieve`
runs (`retrieval_mclstexp`). Slide reading, batching, provenance and the AnnData come from the
same module the pipeline uses (`slide_predict_mclstexp`), so both paths give the same output.

`onnx_predictor` says when this path applies: it takes it only when every condition holds
and otherwise returns the reason, and `predict_to_h5ad` falls back to the PyTorch pipeline
(whose checks then give the user-facing errors). The export is trusted only when its
fingerprint matches the tower weights in the folder's model.safetensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.mclstexp.onnx_tower_mclstexp import (
    ONNX_TOWER_FILENAME,
    OnnxImageTower,
    checkpoint_tower_fingerprint,
    read_export,
)
from ..models.mclstexp.pixels_mclstexp import scale_pixel_values
from ..models.mclstexp.precision_mclstexp import export_plan
from ..models.mclstexp.retrieval_mclstexp import (
    SAVED_INDEX_FILENAME,
    check_bank_arrays,
    check_bank_serves,
    check_k,
    read_spot_bank_file,
    retrieve_arrays,
)
from ..models.mclstexp.slide_predict_mclstexp import (
    DEFAULT_SLIDE_BATCH_SIZE,
    check_batch_size,
    predict_spots,
    slide_anndata,
)


def runtime_label(runtime: str) -> str:
    """The provenance's `runtime` for a PyTorch-free run in `runtime` (onnxruntime, openvino)."""
    return f"{runtime} (no PyTorch)"


RUNTIME = runtime_label("onnxruntime")
_CONFIG_FIELDS = ("gene_names", "patch_size", "pixel_scaling", "projection_dim", "retrieval_k",
                  "retrieval_distance", "retrieval_weighting", "image_encoder")


@dataclass
class CheckpointConfig:
    """The config.json fields prediction reads, as attributes (what `slide_anndata` reads)."""

    gene_names: list[str]
    patch_size: int
    pixel_scaling: str
    projection_dim: int
    retrieval_k: int
    retrieval_distance: str
    retrieval_weighting: str
    image_encoder: str
    expression_units: str | None = None
    expression_transform: str | None = None
    _name_or_path: str = ""

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)


@dataclass
class BankArrays:
    """A spot bank as NumPy arrays (`retrieval_mclstexp.read_spot_bank_file`)."""

    embeddings: np.ndarray
    expression: np.ndarray
    gene_names: list[str]
    section_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


class OnnxSlidePredictor:
    """A checkpoint folder's ONNX tower + spot bank, predicting whole slides (no PyTorch)."""

    device = "cpu"

    def __init__(self, folder: Path, config: CheckpointConfig, bank: BankArrays,
                 tower: OnnxImageTower, source: dict[str, Any], precision: str = "fp32") -> None:
        self.folder, self.config, self.bank, self.tower = folder, config, bank, tower
        self.mclstexp_source = source
        self.precision = precision  # what the tower runs at (export_plan)

    def predict_slide(self, reader, table, *, batch_size: int | None = None, k: int | None = None,
                      library_id: str | None = None, spot_diameter: float | None = None,
                      progress: bool = False, provenance: dict[str, Any] | None = None,
                      precision: str = "auto"):
        """Predict every spot of `table` on an opened slide; AnnData as the pipeline's.
        `precision` is the one requested (recorded); the tower runs at `self.precision`."""
        config = self.config
        k = int(k if k is not None else config.retrieval_k)  # as the pipeline's predict_slide
        check_k(k, len(self.bank))
        batch_size = check_batch_size(DEFAULT_SLIDE_BATCH_SIZE if batch_size is None else batch_size)
        distance, weighting = config.retrieval_distance, config.retrieval_weighting
        size = int(config.patch_size)

        def pixels(patches: list[np.ndarray]) -> np.ndarray:
            batch = np.stack(patches).transpose(0, 3, 1, 2)  # (B, 3, S, S) uint8
            if batch.shape[2:] != (size, size):
                raise ValueError(f"patches of {batch.shape[2:]} px; the model takes {size} px.")
            return scale_pixel_values(batch, config.pixel_scaling)

        def retrieve(embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            expression, _, _, spread = retrieve_arrays(
                embeds, self.bank.embeddings, self.bank.expression, k, distance, weighting,
                return_neighbour_spread=True)
            return expression, spread

        run_precision = self.precision
        out, spread = predict_spots(reader, table, patch_size=size, batch_size=batch_size,
                                    n_genes=config.n_genes, pixels=pixels,
                                    embed=lambda batch: self.tower.run(batch, run_precision),
                                    retrieve=retrieve, progress=progress)
        return slide_anndata(
            reader, table, out, spread, config=config, bank=self.bank, k=k, distance=distance,
            weighting=weighting, device="cpu", precision=run_precision,
            precision_requested=precision, backend=self.tower.runtime(run_precision),
            library_id=library_id, spot_diameter=spot_diameter,
            provenance=provenance)


def cuda_visible() -> bool:
    """Whether a CUDA GPU may be usable, judged without importing torch (NVIDIA driver present
    and not hidden by CUDA_VISIBLE_DEVICES). When in doubt, the PyTorch path decides."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version")


def _read_config(folder: Path) -> CheckpointConfig | None:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if raw.get("model_type") != "mclstexp" or any(key not in raw for key in _CONFIG_FIELDS):
        return None
    if any(processor.get(key) != raw[key] for key in ("patch_size", "pixel_scaling")):
        return None  # the pipeline refuses this pairing with the fix
    return CheckpointConfig(
        **{key: raw[key] for key in _CONFIG_FIELDS},
        expression_units=raw.get("expression_units"),
        expression_transform=raw.get("expression_transform"),
        _name_or_path=str(folder),
    )


def onnx_predictor(model: str | os.PathLike, device: str | None = None, backend: str = "auto",
                   precision: str | None = "auto") -> tuple[OnnxSlidePredictor | None, str]:
    """The PyTorch-free predictor for `model` when this run can use it, else (None, why not).

    The spot count is not known here: when the plan is the fp32 fallback of precision auto on a
    native-bf16 CPU, the caller asks `export_plan` again once it is (a large run goes to
    PyTorch bf16)."""
    if backend == "torch":
        return None, "--backend torch"
    folder = Path(str(model)).expanduser()
    if not folder.is_dir():
        return None, "not a local checkpoint folder"
    if device not in (None, "cpu"):
        return None, f"--device {device}"
    if device is None and cuda_visible():
        return None, "a CUDA GPU may be present (the PyTorch path decides)"
    runtime, run_precision, note = export_plan(precision, backend)
    if runtime is None:
        return None, str(note)
    if (folder / SAVED_INDEX_FILENAME).exists():
        return None, f"the folder has a saved {SAVED_INDEX_FILENAME} (attached by the PyTorch path)"
    config = _read_config(folder)
    if config is None:
        return None, "config.json/preprocessor_config.json incomplete or inconsistent"
    info, why = read_export(folder, checkpoint_tower_fingerprint(folder))
    if info is None:
        return None, why
    try:
        arrays = read_spot_bank_file(folder, framework="numpy")
        bank = BankArrays(
            embeddings=np.ascontiguousarray(arrays["embeddings"], dtype=np.float32),
            expression=np.ascontiguousarray(arrays["expression"], dtype=np.float32),
            gene_names=[str(g) for g in arrays["gene_names"]],
            section_ids=list(arrays["section_ids"]), patient_ids=list(arrays["patient_ids"]),
            metadata=dict(arrays["metadata"]))
        check_bank_arrays(bank.embeddings, bank.expression, bank.gene_names, arrays["positions"],
                          bank.section_ids, bank.patient_ids)
        check_bank_serves(bank.gene_names, int(bank.embeddings.shape[1]), config.gene_names,
                          int(config.projection_dim))
    except (OSError, ValueError, TypeError) as exc:
        return None, f"spot bank: {exc}"
    tower = OnnxImageTower(folder / ONNX_TOWER_FILENAME, info, backend)
    source = {"model": str(folder), "model_revision": "local directory",
              "retrieval_search": "exact", "image_tower_backend": runtime,
              "runtime": runtime_label(runtime),
              "image_tower_onnx_max_abs_difference": info.get("max_abs_difference_vs_torch"),
              **({"precision_note": note} if note else {})}
    return OnnxSlidePredictor(folder, config, bank, tower, source, str(run_precision)), "ok"


__all__ = ["RUNTIME", "OnnxSlidePredictor", "cuda_visible", "onnx_predictor", "runtime_label"]
