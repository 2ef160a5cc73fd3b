"""The `spatial-gene-expression` pipeline: H&E patches or a whole slide → predicted expression.

Three kinds of input, one pipeline:

* one patch (PIL image, path, or uint8 array) → `{gene: value}` in panel order (`top_n=N`: the N
  highest, descending);
* a list of patches → a list of those (batched with `batch_size`);
* a whole slide `{"image": path | PIL | slide object, "spots": DataFrame | (N, 2) array}` with
  full-resolution pixel centres → an `AnnData` following scanpy's spatial conventions
  (`obsm["spatial"]`, `uns["spatial"][library_id]` with a downscaled image and scale factors),
  with units and provenance in `uns["mclstexp"]`. The slide streams through the model
  `batch_size` patches at a time; pyramidal TIFF/SVS files are read region by region with
  tiffslide when it is installed, so memory is bounded by the batch, not the slide.

Prediction is retrieval: the image tower embeds each patch, the spot bank that ships with the
checkpoint supplies the expression of the k most similar reference spots (see the model).

Hub-bound remote code: imports only third-party packages and, relatively, its siblings, so a
checkpoint saved with `save_pipeline_code` loads with
`pipeline("spatial-gene-expression", model=DIR_OR_ID, trust_remote_code=True)` where
`mclstexp_hub` is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .image_processing_mclstexp import MclSTExpImageProcessor
from .precision_mclstexp import autocast, onnx_tower_runtime, prepare_pixels, resolve_precision
from .retrieval_mclstexp import check_k
from .slide_io_mclstexp import Slide, decode_flat_image, open_slide, to_rgb8
from .slide_predict_mclstexp import (
    DEFAULT_SLIDE_BATCH_SIZE,
    HIRES_MAX_SIZE,
    TASK,
    build_prediction_anndata,
    check_batch_size,
    check_spots_inside,
    predict_spots,
    slide_anndata,
    slide_thumbnail,
    spot_table,
)

logger = logging.getLogger(__name__)

PIPELINE_FILENAME = "pipeline_mclstexp.py"


# ------------------------------------------------------------------------------ pipeline
class MclSTExpPipeline(Pipeline):
    """Predict spatial gene expression from H&E with an mclSTExp checkpoint and its spot bank.

    ```python
    from transformers import pipeline
    pipe = pipeline("spatial-gene-expression", model="path/or/hub-id", trust_remote_code=True)
    pipe("patch.png", top_n=10)                      # {gene: value}, 10 highest
    pipe(["a.png", "b.png"], batch_size=16)          # list of dicts
    adata = pipe({"image": "slide.jpg", "spots": df}, batch_size=64)   # AnnData
    ```
    Call options: `top_n`, `k` (neighbours), `distance`, `weighting`, `return_tensors`
    (tensor outputs for patches); for slides also `library_id`, `spot_diameter`, `progress`.
    """

    _load_processor = False
    _load_image_processor = None  # optional: built from the model config when absent
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if getattr(self.model, "spot_bank", None) is None:
            raise ValueError(
                f"The model {getattr(config, '_name_or_path', '') or ''!s} has no spot bank, so it "
                "cannot predict expression (mclSTExp predicts by retrieval from reference spots). "
                "Use a checkpoint with spot_bank.safetensors, or attach one with "
                "`model.attach_spot_bank(...)` / `mclstexp bank build CKPT --dataset ...`."
            )
        if self.image_processor is None:
            logger.warning(
                "No image processor found with the model; using patch_size=%s, pixel_scaling=%r "
                "from its config.", config.patch_size, config.pixel_scaling,
            )
            self.image_processor = MclSTExpImageProcessor(
                patch_size=config.patch_size, pixel_scaling=config.pixel_scaling
            )
        for field in ("patch_size", "pixel_scaling"):
            have, want = getattr(self.image_processor, field, None), getattr(config, field)
            if have != want:
                raise ValueError(
                    f"The image processor's {field}={have!r} differs from the model's "
                    f"config.{field}={want!r}; predictions would use pixels unlike training. "
                    "Save the matching processor with "
                    "`MclSTExpImageProcessor.from_model_config(model.config).save_pretrained(dir)`."
                )

    # ---------------------------------------------------------------- parameters
    def _sanitize_parameters(
        self,
        top_n: int | None = None,
        k: int | None = None,
        distance: str | None = None,
        weighting: str | None = None,
        return_tensors: bool | None = None,
        timeout: float | None = None,
        precision: str | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise TypeError(
                f"spatial-gene-expression got unknown option(s) {sorted(kwargs)}; known: top_n, k, "
                "distance, weighting, return_tensors, timeout, precision, batch_size."
            )
        preprocess = {} if timeout is None else {"timeout": timeout}
        forward = {}
        if precision is not None:
            resolve_precision(precision, self.device)  # refuse unknown values at once
            forward["precision"] = precision
        if k is not None:
            forward["k"] = self._check_k(k)
        if distance is not None:
            forward["distance"] = distance
        if weighting is not None:
            forward["weighting"] = weighting
        postprocess = {}
        if top_n is not None:
            if not isinstance(top_n, int) or top_n < 1:
                raise ValueError(f"top_n must be a positive integer; got {top_n!r}.")
            postprocess["top_n"] = top_n
        if return_tensors is not None:
            postprocess["return_tensors"] = bool(return_tensors)
        return preprocess, forward, postprocess

    def _check_k(self, k: Any) -> int:
        check_k(k, len(self.model.spot_bank))
        return k

    # -------------------------------------------------------------------- calls
    def __call__(self, inputs: Any, **kwargs: Any):
        """Patch(es) → {gene: value} (list for a list); {"image", "spots"} → AnnData."""
        if isinstance(inputs, dict):
            if "image" not in inputs or "spots" not in inputs:
                raise ValueError(
                    "a whole-slide input is a dict {'image': path_or_PIL, 'spots': DataFrame with "
                    f"pixel_x/pixel_y or (n, 2) array}}; got keys {sorted(inputs)}."
                )
            return self.predict_slide(inputs["image"], inputs["spots"], **kwargs)
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image: Any, timeout: float | None = None) -> dict[str, torch.Tensor]:
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if path.startswith(("http://", "https://")):
                from transformers.image_utils import load_image

                try:
                    image = load_image(path, timeout=timeout)
                except Exception as exc:  # network and decoder errors of many types
                    raise ValueError(f"{path}: cannot download or decode image ({exc}).") from exc
            else:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"patch image not found: {path}")
                image = decode_flat_image(path)  # size cap, truncation check, mode conversion
        if isinstance(image, (Image.Image, np.ndarray)):
            # 16-bit scaled, alpha over white, …; writable, as torch.from_numpy wants
            image = np.require(to_rgb8(image, "patch image"), requirements="W")
        inputs = self.image_processor(image, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"].to(self.dtype)}

    def _tower_backend(self, resolved_precision: str) -> str:
        """The runtime of the attached ONNX export ("onnxruntime", "openvino") when it serves
        this run (`onnx_tower_runtime`), else "torch"."""
        return onnx_tower_runtime(self.model, self.device, resolved_precision) or "torch"

    def _embed(self, pixels: torch.Tensor, precision: str | None) -> tuple[torch.Tensor, str]:
        """Image embeddings (fp32) at the resolved precision, channels-last — or, on the CPU,
        from the tower's ONNX export when one is attached (`attach_onnx_tower`) and a runtime
        serves the precision (ONNX Runtime fp32, OpenVINO bf16)."""
        resolved = resolve_precision(precision, self.device)
        if self._tower_backend(resolved) != "torch":
            return self.model.onnx_image_tower(pixels, resolved).float(), resolved
        if not getattr(self, "_channels_last", False):
            self.model.to(memory_format=torch.channels_last)
            self._channels_last = True
        with torch.no_grad(), autocast(resolved, self.device):
            embeds = self.model.get_image_features(prepare_pixels(pixels, resolved)).pooler_output
        return embeds.float(), resolved

    def _forward(self, model_inputs: dict[str, torch.Tensor], k: int | None = None,
                 distance: str | None = None, weighting: str | None = None,
                 precision: str | None = None) -> dict[str, Any]:
        was_training = self.model.training
        self.model.eval()
        try:
            embeds, _ = self._embed(model_inputs["pixel_values"], precision)
        finally:
            self.model.train(was_training)
        pred = self.model.predict_expression(
            image_embeds=embeds, k=k, distance=distance, weighting=weighting
        )
        # Only batched tensors: the pipeline's batching splits every value along dim 0.
        return {
            "expression": pred.expression,
            "neighbour_indices": pred.neighbour_indices,
            "neighbour_weights": pred.neighbour_weights,
            "image_embeds": pred.image_embeds,
            "neighbour_spread": pred.neighbour_spread,
        }

    def postprocess(self, model_outputs: dict[str, Any], top_n: int | None = None,
                    return_tensors: bool = False):
        expression = model_outputs["expression"][0].float()
        if return_tensors:
            return {key: value[0] for key, value in model_outputs.items()}
        genes = list(self.model.config.gene_names)
        values = expression.tolist()
        if top_n is None:
            return dict(zip(genes, values, strict=True))
        order = np.argsort(-np.asarray(values), kind="stable")[:top_n]
        return {genes[i]: values[i] for i in order}

    # --------------------------------------------------------------- whole slide
    @torch.no_grad()
    def predict_slide(
        self,
        image: Any,
        spots: Any,
        batch_size: int | None = None,
        k: int | None = None,
        distance: str | None = None,
        weighting: str | None = None,
        library_id: str | None = None,
        spot_diameter: float | None = None,
        progress: bool = False,
        provenance: dict[str, Any] | None = None,
        precision: str | None = None,
        **unused: Any,
    ):
        """Predict every spot of a slide; returns AnnData (see module docstring).

        Patches are read, processed and embedded `batch_size` at a time, and retrieval runs on
        each batch, so only the (n_spots, n_genes) result grows with the slide. A reader thread
        cuts and scales the next batch while the image tower runs on the current one.
        `precision` ("auto" by default: bf16 on native-bf16 hardware) is recorded.
        """
        if unused:
            raise TypeError(f"predict_slide got unknown option(s) {sorted(unused)}.")
        config = self.model.config
        k = self._check_k(int(k if k is not None else config.retrieval_k))
        distance = distance or config.retrieval_distance
        weighting = weighting or config.retrieval_weighting
        if batch_size is None:
            batch_size = self._batch_size if self._batch_size is not None else DEFAULT_SLIDE_BATCH_SIZE
        check_batch_size(batch_size)
        if precision is None:
            precision = self._forward_params.get("precision", "auto")
        resolve_precision(precision, self.device)
        table = spot_table(spots)
        reader = open_slide(image)
        try:
            return self._predict_opened_slide(reader, table, batch_size, k, distance, weighting,
                                              library_id, spot_diameter, progress, provenance,
                                              precision)
        finally:
            if reader is not image:  # opened here from a path/array: free it here
                reader.close()

    def _predict_opened_slide(self, reader: Slide, table, batch_size: int, k: int, distance: str,
                              weighting: str, library_id: str | None,
                              spot_diameter: float | None, progress: bool,
                              provenance: dict[str, Any] | None, precision: str):
        config = self.model.config
        resolved = resolve_precision(precision, self.device)

        def pixels(patches: list[np.ndarray]) -> torch.Tensor:
            batch = self.image_processor(patches, return_tensors="pt")["pixel_values"]
            return batch.to(device=self.device, dtype=self.dtype)

        def retrieve(embeds: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            pred = self.model.predict_expression(image_embeds=embeds, k=k, distance=distance,
                                                 weighting=weighting)
            return pred.expression.float().numpy(), pred.neighbour_spread.float().numpy()

        was_training = self.model.training
        self.model.eval()
        try:
            out, spread = predict_spots(
                reader, table, patch_size=int(config.patch_size), batch_size=batch_size,
                n_genes=config.n_genes, pixels=pixels,
                embed=lambda batch: self._embed(batch, precision)[0], retrieve=retrieve,
                progress=progress)
        finally:
            self.model.train(was_training)
        return slide_anndata(
            reader, table, out, spread, config=config, bank=self.model.spot_bank, k=k,
            distance=distance, weighting=weighting, device=str(self.device), precision=resolved,
            precision_requested=precision, backend=self._tower_backend(resolved),
            library_id=library_id, spot_diameter=spot_diameter, provenance=provenance)


# ------------------------------------------------------------------- saving the pipeline code
def custom_pipeline_entry() -> dict[str, Any]:
    """The `custom_pipelines` entry of config.json that transformers resolves remotely."""
    module = MclSTExpPipeline.__module__.split(".")[-1]
    return {TASK: {"impl": f"{module}.{MclSTExpPipeline.__name__}", "pt": ["AutoModel"],
                   "type": "image"}}


def save_pipeline_code(save_directory: str | os.PathLike) -> list[str]:
    """Make a saved checkpoint loadable with `pipeline(TASK, model=dir, trust_remote_code=True)`.

    Copies this file (and its relative imports) next to the weights and records
    `custom_pipelines` in the directory's config.json (written atomically). Call it after
    `model.save_pretrained(dir)`.
    """
    from transformers.dynamic_module_utils import custom_object_save

    folder = Path(save_directory)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: save the model first (model.save_pretrained({str(folder)!r}))."
        )
    copied = [str(p) for p in custom_object_save(MclSTExpPipeline, folder) or []]
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = custom_pipeline_entry()
    _write_json_atomic(config_path, config)
    # The processor's code was copied with the pipeline's (relative import); point its config
    # at it so AutoImageProcessor finds it where the package is not installed.
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        processor = json.loads(processor_path.read_text(encoding="utf-8"))
        auto_map = processor.setdefault("auto_map", {})
        if "AutoImageProcessor" not in auto_map:
            module = MclSTExpImageProcessor.__module__.split(".")[-1]
            auto_map["AutoImageProcessor"] = f"{module}.{MclSTExpImageProcessor.__name__}"
            _write_json_atomic(processor_path, processor)
    return copied


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, os.stat(path).st_mode & 0o777)  # keep the file's permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = [
    "TASK",
    "MclSTExpPipeline",
    "build_prediction_anndata",
    "slide_thumbnail",
    "custom_pipeline_entry",
    "save_pipeline_code",
    "spot_table",
]
