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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .image_processing_mclstexp import MclSTExpImageProcessor
from .precision_mclstexp import autocast, prepare_pixels, resolve_precision
from .slide_io_mclstexp import CROP_CONVENTION, Slide, decode_flat_image, open_slide, to_rgb8

logger = logging.getLogger(__name__)

TASK = "spatial-gene-expression"
PIPELINE_FILENAME = "pipeline_mclstexp.py"
DEFAULT_SLIDE_BATCH_SIZE = 32
HIRES_MAX_SIZE = 2000  # longest side of the stored thumbnail, as Space Ranger's hires image


# ---------------------------------------------------------------------------- slide reading
def slide_thumbnail(slide: Slide, max_size: int = HIRES_MAX_SIZE) -> tuple[np.ndarray, float]:
    """(thumbnail uint8 (h, w, 3), scale factor full-resolution → thumbnail pixels)."""
    thumb = np.asarray(slide.thumbnail(max_size).convert("RGB"), dtype=np.uint8)
    return thumb, thumb.shape[1] / slide.width


# ------------------------------------------------------------------------------ spot tables
def spot_table(spots: Any):
    """A DataFrame with `pixel_x`, `pixel_y` (full-resolution centres) and a unique `spot_id`."""
    import pandas as pd

    if isinstance(spots, pd.DataFrame):
        missing = [c for c in ("pixel_x", "pixel_y") if c not in spots.columns]
        if missing:
            raise ValueError(
                f"spots table lacks column(s) {missing}; it needs `pixel_x` and `pixel_y` "
                "(full-resolution pixel centres) and optionally `spot_id`. Columns found: "
                f"{list(spots.columns)[:12]}."
            )
        table = spots.reset_index(drop=True).copy()
    else:
        xy = np.asarray(spots, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(
                f"spots must be a DataFrame with pixel_x/pixel_y or an (n, 2) array of "
                f"full-resolution (x, y) pixel centres; got shape {xy.shape}."
            )
        table = pd.DataFrame({"pixel_x": xy[:, 0], "pixel_y": xy[:, 1]})
    if len(table) == 0:
        raise ValueError("spots table is empty: give at least one spot centre.")
    xy = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise ValueError(f"spots: {int((~np.isfinite(xy)).any(axis=1).sum())} spot(s) have "
                         "missing/non-numeric pixel_x/pixel_y.")
    table["pixel_x"], table["pixel_y"] = xy[:, 0], xy[:, 1]
    if "spot_id" not in table.columns:
        width = len(str(len(table) - 1))
        table["spot_id"] = [f"spot_{i:0{width}d}" for i in range(len(table))]
    table["spot_id"] = table["spot_id"].astype(str)
    dup = table["spot_id"][table["spot_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"spots: duplicate spot_id(s) {list(dup[:10])}; each spot must appear once.")
    return table


def check_spots_inside(table, width: int, height: int, image_name: str) -> None:
    """Refuse spot centres outside the image (wrong image/coordinate pairing)."""
    x, y = table["pixel_x"].to_numpy(), table["pixel_y"].to_numpy()
    outside = ~((x >= 0) & (x < width) & (y >= 0) & (y < height))
    if outside.any():
        bad = table["spot_id"][outside].tolist()
        raise ValueError(
            f"{image_name}: {len(bad)} spot centre(s) lie outside the {width}x{height} image, e.g. "
            f"{bad[:10]}. Spot coordinates must be full-resolution pixels of this image (not "
            "hires/lowres PNG pixels); check that the spots belong to this image."
        )


# ------------------------------------------------------------------------------ AnnData
def _plain(value: Any) -> Any:
    """A value h5ad can store in `uns` (None → "", nested dicts kept, numpy → Python)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if all(isinstance(v, str) for v in items) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in items
        ):
            return items
        return json.dumps(items, default=str)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (str, int, float, bool, np.ndarray)):
        return value
    return str(value)


def build_prediction_anndata(
    expression: np.ndarray,
    gene_names: list[str],
    spots,
    thumbnail: np.ndarray,
    scalefactor: float,
    spot_diameter_fullres: float,
    library_id: str,
    provenance: dict[str, Any],
    image_metadata: dict[str, Any] | None = None,
    neighbour_spread: np.ndarray | None = None,
):
    """Predicted expression as AnnData that `scanpy.pl.spatial` draws unchanged.

    `neighbour_spread` (n_spots, n_genes), the neighbours' weighted spread, goes to
    `layers["neighbour_spread"]` and its mean over genes to `obs["neighbour_spread"]`.
    """
    import anndata as ad
    import pandas as pd

    obs = spots.copy()
    obs.index = pd.Index(obs["spot_id"].astype(str).to_numpy(), name=None)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype(str)
    adata = ad.AnnData(
        X=np.ascontiguousarray(expression, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(g) for g in gene_names])),
    )
    if neighbour_spread is not None:
        spread = np.ascontiguousarray(neighbour_spread, dtype=np.float32)
        if spread.shape != adata.shape:
            raise ValueError(f"neighbour_spread has shape {spread.shape}; expected {adata.shape}.")
        adata.layers["neighbour_spread"] = spread
        adata.obs["neighbour_spread"] = spread.mean(axis=1) if spread.shape[1] else 0.0
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": np.ascontiguousarray(thumbnail, dtype=np.uint8)},
            "scalefactors": {
                "tissue_hires_scalef": float(scalefactor),
                "spot_diameter_fullres": float(spot_diameter_fullres),
            },
            "metadata": _plain(image_metadata or {}),
        }
    }
    adata.uns["mclstexp"] = _plain(provenance)
    return adata


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - stdlib
        return "unknown"
    try:
        return version("mclstexp-hub")
    except PackageNotFoundError:
        return "not installed (loaded as remote code)"


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
        n = len(self.model.spot_bank)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        if k > n:
            raise ValueError(f"k={k} is larger than the spot bank ({n} spots); use k <= {n}.")
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
        """"onnxruntime" when an ONNX export is attached and the run is fp32 on CPU, else "torch"."""
        attached = getattr(self.model, "onnx_image_tower", None) is not None
        on_cpu = self.device.type == "cpu"
        return "onnxruntime" if attached and on_cpu and resolved_precision == "fp32" else "torch"

    def _embed(self, pixels: torch.Tensor, precision: str | None) -> tuple[torch.Tensor, str]:
        """Image embeddings (fp32) at the resolved precision, channels-last — or, in fp32 on
        CPU, from the ONNX Runtime export of the tower when one is attached (`attach_onnx_tower`)."""
        resolved = resolve_precision(precision, self.device)
        if self._tower_backend(resolved) == "onnxruntime":
            return self.model.onnx_image_tower(pixels).float(), resolved
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
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
        bank = self.model.spot_bank
        name = reader.name
        check_spots_inside(table, reader.width, reader.height, name)
        size = int(config.patch_size)
        xy = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        out = np.empty((len(table), config.n_genes), dtype=np.float32)
        spread = np.empty_like(out)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(table), unit="spot", desc="predict")

        def load(start: int) -> tuple[int, int, torch.Tensor]:
            """Cut and scale one batch (runs on the reader thread)."""
            chunk = xy[start : start + batch_size]
            patches = [reader.read_patch(cx, cy, size) for cx, cy in chunk]
            uniform = sum(int(p.min() == p.max()) for p in patches)
            pixels = self.image_processor(patches, return_tensors="pt")["pixel_values"]
            return len(chunk), uniform, pixels.to(device=self.device, dtype=self.dtype)

        was_training = self.model.training
        self.model.eval()
        n_uniform = 0
        resolved = resolve_precision(precision, self.device)
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mclstexp-patches") as pool:
                starts = list(range(0, len(table), batch_size))
                pending = pool.submit(load, starts[0]) if starts else None
                for i, start in enumerate(starts):
                    n, uniform, pixels = pending.result()
                    pending = pool.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
                    n_uniform += uniform
                    embeds, resolved = self._embed(pixels, precision)
                    pred = self.model.predict_expression(
                        image_embeds=embeds, k=k, distance=distance, weighting=weighting
                    )
                    out[start : start + n] = pred.expression.float().numpy()
                    spread[start : start + n] = pred.neighbour_spread.float().numpy()
                    if bar is not None:
                        bar.update(n)
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        if n_uniform == len(table):
            raise ValueError(
                f"{name}: every patch is a single flat colour (a blank, black or white image?); "
                "refusing to predict from no tissue. Check the image and the spot coordinates."
            )
        thumb, scale = slide_thumbnail(reader, HIRES_MAX_SIZE)
        library_id = library_id or (reader.path.stem if reader.path else "slide")
        record = {
            "task": TASK,
            "model": str(getattr(config, "_name_or_path", "") or ""),
            "model_revision": "",  # filled by callers that know it (mclstexp predict does)
            "units": config.expression_units or bank.metadata.get("expression_units")
            or "unknown (the checkpoint does not record its expression units)",
            "expression_transform": config.expression_transform
            or bank.metadata.get("expression_transform") or "unknown",
            "retrieval_k": k,
            "retrieval_distance": distance,
            "retrieval_weighting": weighting,
            "patch_size": size,
            "pixel_scaling": config.pixel_scaling,
            "image_encoder": config.image_encoder,
            "spot_bank_n_spots": len(bank),
            "spot_bank_sections": sorted(set(bank.section_ids)),
            "spot_bank_patients": sorted(set(bank.patient_ids)),
            "spot_bank_metadata_json": json.dumps(bank.metadata, default=str, sort_keys=True),
            "package_version": _package_version(),
            "transformers_version": _transformers_version(),
            "device": str(self.device),
            "image": str(reader.path or ""),
            "crop_convention": CROP_CONVENTION,
            "precision": resolved,
            "precision_requested": str(precision),
            "image_width": reader.width,
            "image_height": reader.height,
            "n_spots": len(table),
            "library_id": library_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        record.update(provenance or {})
        record["image_tower_backend"] = self._tower_backend(resolved)  # what this run used
        return build_prediction_anndata(
            out,
            list(config.gene_names),
            table,
            thumb,
            scale,
            float(spot_diameter or size),
            library_id,
            record,
            image_metadata={"source_image": str(reader.path or ""), "width": reader.width,
                            "height": reader.height},
            neighbour_spread=spread,
        )


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


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
