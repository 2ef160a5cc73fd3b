"""Slide → `pred.h5ad` (+ gene maps): what `mclstexp predict` runs.

The heavy lifting is the `spatial-gene-expression` pipeline (Hub-bound, so remote-code users
get the same behaviour) — or, for an fp32 CPU run of a folder with a valid ONNX export, the
PyTorch-free runtime (`onnx_runtime`, same slide loop and output, no torch import); this module
adds what a command-line user needs around it: spot
tables from a CSV / Space Ranger / a tissue grid, observed expression in the model's units,
provenance, atomic writing and pictures.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import check_output, replace_folder, staging
from .io import check_output_path, write_h5ad_atomic

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


def ensure_registered() -> None:
    """Register config, model, processor and pipeline with transformers (idempotent)."""
    from ..models.mclstexp import register

    register()


def resolve_device(device: str | None) -> str:
    """"cpu", "cuda" (error when unavailable), or None → cuda when available, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA GPU is available; use --device cpu.")
    return device


def load_pipeline(
    model: str | Path,
    device: str | None = None,
    revision: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = "auto",
    precision: str | None = None,
) -> MclSTExpPipeline:
    """The installed `spatial-gene-expression` pipeline for a checkpoint directory or Hub id.

    precision: the calls' default tower precision ("auto", "fp32", "bf16"); None = "auto".

    Uses this package's classes even when the checkpoint also carries remote code (transformers
    would otherwise insist on `trust_remote_code=True` for a config with `custom_pipelines`).
    backend: the image tower's runtime — "torch", "onnxruntime" / "openvino" (the checkpoint
    folder's `image_tower.onnx` from `mclstexp onnx` in that runtime; refused when absent or
    stale) or "auto" (that export when valid, in ONNX Runtime for fp32 and OpenVINO for bf16
    when installed, else torch); recorded in the provenance.
    """
    from ..models.mclstexp.onnx_tower_mclstexp import attach_onnx_tower, check_backend
    from ..models.mclstexp.pipeline_mclstexp import TASK, MclSTExpPipeline
    from ..models.mclstexp.precision_mclstexp import EXPORT_BACKENDS

    check_backend(backend)
    from transformers import pipeline

    ensure_registered()
    model = str(model)
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise FileNotFoundError(
                f"model not found: {model}. Pass a checkpoint directory (with config.json, "
                "model.safetensors, spot_bank.safetensors) or a Hub model id 'org/name'."
            )
        model = str(path)
        source = {"model": model, "model_revision": "local directory"}
    else:
        # Resolve the revision once: every file comes from that commit, and it is recorded.
        from transformers.utils.hub import resolve_revision

        revision = resolve_revision(model, revision)
        commit = getattr(revision, "resolved", None)
        source = {"model": model, "model_revision": str(revision or "main")
                  + (f" (commit {commit})" if commit and commit != str(revision) else "")}
    # The model is loaded with this package's class (not the Auto factory, which hides the
    # real error behind "could not load with any of the classes"), then handed to the pipeline.
    from transformers import AutoImageProcessor

    from ..models.mclstexp.modeling_mclstexp import MclSTExpModel

    device = resolve_device(device)
    loaded = MclSTExpModel.from_pretrained(model, revision=revision)
    if looks_local:  # a saved FAISS index next to the bank (`bank build --index`), if valid
        from ..retrieval.auto import attach_saved_searcher

        source.update(attach_saved_searcher(loaded, model))
    # The pipeline records the backend each run actually used (`image_tower_backend`); here
    # only an export is attached, or an explicit onnxruntime request refused.
    if backend in EXPORT_BACKENDS and not looks_local:
        raise ValueError(f"--backend {backend} needs a local checkpoint folder holding "
                         "image_tower.onnx (`mclstexp onnx DIR`); download the model first.")
    if backend in EXPORT_BACKENDS and device != "cpu":
        raise ValueError(f"--backend {backend} runs on the CPU; use --device cpu.")
    if looks_local and device == "cpu":
        source.update(attach_onnx_tower(loaded, model, backend))
    try:
        processor = AutoImageProcessor.from_pretrained(model, revision=revision,
                                                       trust_remote_code=False)
    except (OSError, ValueError):
        processor = None  # the pipeline builds one from the config (and says so)
    pipe = pipeline(
        TASK,
        model=loaded,
        image_processor=processor,
        device=device,
        pipeline_class=MclSTExpPipeline,
        batch_size=batch_size,
        **({} if precision is None else {"precision": precision}),
    )
    pipe.mclstexp_source = source  # provenance for predict_to_h5ad
    return pipe


@dataclass
class PredictionResult:
    """What `predict_to_h5ad` produced."""

    adata: Any
    path: Path
    plots: list[Path] = field(default_factory=list)
    observed_mean_r: float | None = None


def _spots_for(slide, *, spots_csv, visium, tile, patch_size, tile_pitch, min_tissue_fraction):
    chosen = [name for name, value in (("--spots", spots_csv), ("--visium", visium),
                                      ("--tile", tile)) if value]
    if len(chosen) != 1:
        raise ValueError(
            "give exactly one of --spots CSV, --visium OUTS_DIR or --tile (got "
            f"{chosen or 'none'})."
        )
    if spots_csv:
        from .spots import read_spots_csv

        return read_spots_csv(spots_csv), None, f"csv: {spots_csv}"
    if visium:
        from .spots import read_visium_spots

        table, scalefactors = read_visium_spots(visium)
        diameter = scalefactors.get("spot_diameter_fullres")
        return table, (float(diameter) if diameter else None), f"visium: {visium}"
    if tile_pitch is not None and not float(tile_pitch) > 0:
        raise ValueError(f"--tile-pitch must be > 0 full-resolution pixels; got {tile_pitch}.")
    from .tiling import tile_spots

    pitch = float(tile_pitch) if tile_pitch is not None else float(patch_size)
    table = tile_spots(slide, pitch=pitch, patch_size=patch_size,
                       min_tissue_fraction=min_tissue_fraction)
    source = (f"tile: regular grid, pitch {pitch:g} px, tissue by Otsu on thumbnail saturation, "
              f">= {min_tissue_fraction:.0%} tissue per patch")
    return table, None, source


def add_observed(adata, observed: str | Path, gene_names: list[str], transform: str | None) -> float:
    """Put observed expression (model units) in `layers["observed"]`, r per gene in `var`."""
    from ..evaluation.metrics import pearson_per_gene
    from .observed import observed_in_model_units, read_counts_table

    counts = read_counts_table(observed)
    values, matched = observed_in_model_units(
        counts, gene_names, transform, list(adata.obs_names), source=str(observed)
    )
    adata.layers["observed"] = values
    r = np.full(len(gene_names), np.nan)
    if matched.sum() >= 2:
        r, _ = pearson_per_gene(np.asarray(adata.X)[matched], values[matched])
    adata.var["pearson_r"] = r.astype(np.float64)
    finite = r[np.isfinite(r)]
    mean_r = float(finite.mean()) if finite.size else float("nan")
    info = adata.uns["mclstexp"]
    info["observed_source"] = str(observed)
    info["observed_n_spots_matched"] = int(matched.sum())
    info["observed_mean_pearson_r"] = mean_r
    return mean_r


@contextmanager
def open_in_background(image: Any) -> Iterator[Future]:
    """`open_slide(image)` in a worker thread, with the stored thumbnail drawn too.

    Yields the future; the slide is closed when the block ends, and an error of the slide
    (missing, corrupt, oversized) is raised where `.result()` is asked for, as `open_slide`
    would have raised it.
    """
    from ..models.mclstexp.slide_io_mclstexp import open_slide
    from ..models.mclstexp.slide_predict_mclstexp import HIRES_MAX_SIZE

    def opened():
        slide = open_slide(image)
        try:
            slide.thumbnail(HIRES_MAX_SIZE)  # kept by the slide for the output's image
        except BaseException:
            slide.close()
            raise
        return slide

    pool = ThreadPoolExecutor(1, thread_name_prefix="mclstexp-slide")
    future = pool.submit(opened)
    try:
        yield future
    finally:
        pool.shutdown(wait=True)
        if future.exception() is None:
            future.result().close()


def predict_to_h5ad(
    model: str | Path,
    image: str | Path,
    out: str | Path,
    *,
    spots_csv: str | Path | None = None,
    visium: str | Path | None = None,
    tile: bool = False,
    plot_genes: Sequence[str] = (),
    plot_dir: str | Path | None = None,
    observed: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    revision: str | None = None,
    k: int | None = None,
    library_id: str | None = None,
    tile_pitch: float | None = None,
    min_tissue_fraction: float = 0.5,
    overwrite: bool = False,
    progress: bool = True,
    pipe: MclSTExpPipeline | OnnxSlidePredictor | None = None,
    precision: str = "auto",
    backend: str = "auto",
) -> PredictionResult:
    """Predict every spot of `image` and write `out` atomically; draw `plot_genes`.

    `out` ending in `.zarr` is written as a SpatialData store (`spatialdata_io`), else .h5ad.
    """
    inputs = [image, spots_csv, visium, observed, model if Path(str(model)).exists() else None]
    zarr_out = Path(str(out)).suffix == ".zarr"
    if zarr_out:  # SpatialData store: checked (and spatialdata looked up) before slow work
        from .spatialdata_io import check_zarr_output, require_spatialdata

        out = check_zarr_output(out, overwrite, inputs=inputs)
        require_spatialdata()
    else:
        if Path(str(out)).suffix != ".h5ad":
            raise ValueError(f"output {out} must end in .h5ad (AnnData) or .zarr (SpatialData).")
        out = check_output_path(out, overwrite, inputs=inputs)  # fail before any slow work
    maps_dir = None
    if plot_genes:
        maps_dir = Path(plot_dir) if plot_dir else out.parent / f"{out.stem}_maps"
        check_output(maps_dir, overwrite=overwrite, inputs=inputs, is_ours=_is_maps_folder,
                     what="gene-map folder", option="--plot-dir")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}.")
    from ..models.mclstexp.onnx_tower_mclstexp import check_backend

    check_backend(backend)  # before the PyTorch-free path reads it
    from ..models.mclstexp.precision_mclstexp import export_plan
    from .onnx_runtime import OnnxSlidePredictor, onnx_predictor

    # the slide is decoded (and its stored thumbnail drawn) in a thread while the model
    # loads: both are C code that releases the GIL, so on a small machine this start-up
    # work overlaps the imports and the model load instead of adding to them
    with open_in_background(image) as opening:
        def torch_pipeline(why: str) -> MclSTExpPipeline:
            loaded = load_pipeline(model, device=device, revision=revision, batch_size=batch_size,
                                   backend=backend)
            loaded.mclstexp_source = {**loaded.mclstexp_source, "runtime": "pytorch",
                                      "runtime_note": f"PyTorch-free runtime not used: {why}"}
            return loaded

        chose_runtime = pipe is None
        if pipe is None:
            # PyTorch-free when the run allows it (CPU, valid ONNX export, a runtime for the
            # precision: precision_mclstexp.export_plan), else the pipeline
            runner, why = onnx_predictor(model, device=device, backend=backend, precision=precision)
            pipe = torch_pipeline(why) if runner is None else runner
        config = pipe.config if isinstance(pipe, OnnxSlidePredictor) else pipe.model.config
        genes = list(config.gene_names)
        unknown = [g for g in plot_genes if g not in set(genes)]
        if unknown:
            import difflib

            hints = {g: difflib.get_close_matches(g, genes, n=3) for g in unknown}
            raise ValueError(
                f"--plot gene(s) {unknown} are not in the model's gene panel ({len(genes)} genes); "
                f"close matches: {hints}. Plot genes of config.gene_names."
            )
        # what the spot table and the AnnData need (~2 s of GIL-bound imports), imported here
        # in the main thread while the slide is still decoding in its own
        for library in ("pandas", "anndata"):
            importlib.import_module(library)
        slide = opening.result()
        table, diameter, source = _spots_for(
            slide, spots_csv=spots_csv, visium=visium, tile=tile, patch_size=config.patch_size,
            tile_pitch=tile_pitch, min_tissue_fraction=min_tissue_fraction,
        )
        if chose_runtime and isinstance(pipe, OnnxSlidePredictor):
            # the spot count is known now: the fp32 fallback of precision auto on a
            # native-bf16 CPU sends a large run to PyTorch bf16 (AUTO_ONNX_MAX_SPOTS)
            runtime, _, note = export_plan(precision, backend, len(table))
            if runtime is None:
                pipe = torch_pipeline(str(note))
            elif note:
                pipe.mclstexp_source = {**pipe.mclstexp_source, "precision_note": note}
        if visium and observed is None and (Path(visium) / "filtered_feature_bc_matrix.h5").is_file():
            observed = Path(visium)
        adata = pipe.predict_slide(
            slide, table, batch_size=batch_size, k=k, library_id=library_id or Path(image).stem,
            spot_diameter=diameter, progress=progress, precision=precision,
            provenance={**getattr(pipe, "mclstexp_source", {"model": str(model),
                                                               "model_revision": str(revision)}),
                        "spots_source": source, "image": str(image)},
        )
    mean_r = None
    if observed is not None:
        mean_r = add_observed(adata, observed, genes, config.expression_transform)
    # Complete or absent: the maps are drawn into a hidden sibling folder first, so a failure
    # while plotting leaves neither the .h5ad nor a half-written maps folder behind.
    with ExitStack() as scratch:
        staged = None
        if maps_dir is not None:
            from ..visualization.spatial_maps import save_gene_maps

            staged = scratch.enter_context(staging(maps_dir.parent, f".{maps_dir.name}.partial-"))
            save_gene_maps(adata, list(plot_genes), staged)
        if zarr_out:
            from .spatialdata_io import write_spatialdata_atomic

            path = write_spatialdata_atomic(adata, out, overwrite=overwrite, inputs=inputs)
        else:
            path = write_h5ad_atomic(adata, out, overwrite=overwrite, inputs=inputs)
        plots: list[Path] = []
        if staged is not None and maps_dir is not None:
            try:
                replace_folder(staged, maps_dir)
            except BaseException:
                if path.is_dir():  # a .zarr store
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                raise
            plots = sorted(maps_dir.glob("*.png"))
    return PredictionResult(adata=adata, path=path, plots=plots, observed_mean_r=mean_r)


def _is_maps_folder(path: Path) -> bool:
    """A folder of gene-map PNGs written by `mclstexp predict --plot` (nothing else in it)."""
    return path.is_dir() and all(p.is_file() and p.suffix == ".png" for p in path.iterdir())


__all__ = [
    "PredictionResult",
    "add_observed",
    "ensure_registered",
    "load_pipeline",
    "predict_to_h5ad",
    "resolve_device",
]
