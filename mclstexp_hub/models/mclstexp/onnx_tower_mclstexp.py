"""The image tower (encoder + projection) exported to ONNX and run by ONNX Runtime.

Why: on this project's 2-core AVX2 CPU, ONNX Runtime runs the DenseNet-121 tower 1.77x faster
than PyTorch eager in channels-last fp32 (25.7 vs 14.5 patches/s, batch 32, max |difference|
2e-6), and the tower is the one cost of prediction that grows with the number of spots.

`export_image_tower(model, folder)` writes `image_tower.onnx` and `image_tower_onnx.json`
(the fingerprint of the weights it was exported from, the export's measured agreement with
PyTorch) next to the checkpoint. `attach_onnx_tower(model, folder)` loads it only when the
fingerprint matches the loaded weights, so a retrained or edited checkpoint never runs a stale
export. The export is fp32; ONNX Runtime runs it in fp32 and OpenVINO in bf16 on CPUs with
native bf16 (`precision_mclstexp.export_runtime` decides which; measured figures there).

Running an export needs neither torch nor transformers: `checkpoint_tower_fingerprint(folder)`
computes the same fingerprint from the checkpoint's files, so `mclstexp predict` can check and
run the export without importing them (mclstexp_hub/prediction/onnx_runtime.py).

Hub-bound remote code: imports only third-party packages; onnxruntime/onnx/openvino are
optional and imported only when used (`pip install 'mclstexp-hub[onnx]'`); torch only to export
or to fingerprint a loaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .precision_mclstexp import BACKENDS, EXPORT_BACKENDS, export_runtime, runtime_installed

ONNX_TOWER_FILENAME = "image_tower.onnx"
ONNX_TOWER_INFO_FILENAME = "image_tower_onnx.json"
EXPORT_CHECK_TOLERANCE = 1e-3  # max |onnx - torch| on the export's check batch (values ~ 1)


def check_backend(backend: str) -> str:
    """Refuse an image-tower runtime that is not one of `BACKENDS` (`predict --backend`)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}; got {backend!r}.")
    return backend


# What the tower's output depends on besides its weights (config fields).
FINGERPRINT_CONFIG_KEYS = ("image_encoder", "encoder_input_size", "patch_size", "pixel_scaling",
                           "image_encoder_final_activation")
TOWER_MODULES = ("image_encoder", "image_projection")


def _tower_digest(config_value, state: Iterable[tuple[str, str, bytes]]) -> str:
    """The one fingerprint recipe: config fields, then (name, dtype, bytes) of every tensor."""
    digest = hashlib.sha256()
    for key in FINGERPRINT_CONFIG_KEYS:
        digest.update(f"{key}={config_value(key)}".encode())
    for name, dtype, data in state:
        digest.update(f"{name}:{dtype}".encode())
        digest.update(data)
    return digest.hexdigest()


def tower_fingerprint(model: Any) -> str:
    """sha256 of what the tower's output depends on: encoder + projection weights and buffers,
    the encoder's name and input size, the patch size and pixel scaling."""
    config = model.config

    def state():
        for prefix in TOWER_MODULES:
            yield from _module_state(getattr(model, prefix), prefix)

    return _tower_digest(lambda key: getattr(config, key, None), state())


def checkpoint_tower_fingerprint(folder: str | os.PathLike) -> str | None:
    """`tower_fingerprint` of the model saved in `folder`, from config.json and model.safetensors
    without torch; None when the files cannot give it (absent, or a tensor NumPy cannot hold)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        from safetensors import safe_open

        with safe_open(os.fspath(folder / "model.safetensors"), framework="numpy") as f:
            names = sorted(k for k in f.keys() if k.split(".", 1)[0] in TOWER_MODULES)
            tensors = [(name, f.get_tensor(name)) for name in names]
    except Exception:  # missing/unreadable files, bf16 tensors (no NumPy dtype), …
        return None
    if any(key not in config for key in FINGERPRINT_CONFIG_KEYS[:4]):
        return None  # an older config: its defaults live in the config class (torch path)
    state = ((name, f"torch.{array.dtype.name}", np.ascontiguousarray(array).tobytes())
             for name, array in tensors)
    return _tower_digest(lambda key: config.get(key), state)


def _module_state(module: Any, prefix: str) -> Iterable[tuple[str, str, bytes]]:
    import torch

    for name, tensor in sorted(module.state_dict().items()):
        raw = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        yield f"{prefix}.{name}", str(tensor.dtype), raw


def digest_module_state(digest: Any, module: Any, prefix: str = "") -> None:
    """Feed every parameter and buffer of `module` (name, dtype, bytes) into a hashlib digest."""
    for name, dtype, data in _module_state(module, prefix):
        digest.update(f"{name}:{dtype}".encode())
        digest.update(data)


def _tower_graph(model: Any):
    """pixel_values (B, 3, S, S) → projected image embeddings (B, projection_dim), as a module."""
    from torch import nn

    class _TowerGraph(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    return _TowerGraph(model)


def _missing_runtime(name: str) -> str:
    """What to say when the runtime package `name` is not installed, with the fix."""
    return (f"{name} is not installed; `pip install 'mclstexp-hub[onnx]'` (onnxruntime, onnx, "
            "onnxscript, openvino) or use --backend torch.")


def _require_runtime(name: str):
    """Import the runtime package `name` ("onnxruntime" or "openvino"), or raise with the fix."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(_missing_runtime(name)) from exc


def _threads(threads: int | None = None) -> int:
    """As many threads as torch would use: the CPUs this process may run on (or OMP_NUM_THREADS)."""
    return int(threads or os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))


def _session(path: str | os.PathLike, threads: int | None = None):
    ort = _require_runtime("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _openvino_model(path: str | os.PathLike, precision: str, threads: int | None = None):
    """The export compiled by OpenVINO's CPU plugin at `precision` ("fp32" or "bf16"), tuned
    for one request at a time (the slide reader feeds one batch after another)."""
    ov = _require_runtime("openvino")
    core = ov.Core()
    return core.compile_model(core.read_model(os.fspath(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": _threads(threads), "PERFORMANCE_HINT": "LATENCY"})


class OnnxImageTower:
    """Callable like the PyTorch tower: float pixel_values (B, 3, S, S) → embeddings (B, D).

    `backend` ("auto", "onnxruntime", "openvino") and each call's resolved precision choose the
    runtime (`export_runtime`); each runtime is opened on first use."""

    def __init__(self, path: str | os.PathLike, info: dict[str, Any], backend: str = "auto") -> None:
        self.path = Path(path)
        self.info = info
        self.backend = check_backend(backend)
        self._runners: dict[tuple[str, str], Any] = {}

    def runtime(self, precision: str = "fp32") -> str:
        """The runtime that serves `precision` here; raises with the reason when none does."""
        runtime, why = export_runtime(self.backend, precision)
        if runtime is None:
            raise ValueError(f"the ONNX export of the image tower cannot run in {precision}: {why}.")
        return runtime

    def run(self, pixel_values: np.ndarray, precision: str = "fp32") -> np.ndarray:
        """float32 ndarray (B, 3, S, S) → float32 embeddings ndarray (B, D)."""
        runtime = self.runtime(precision)
        key = (runtime, precision)
        if key not in self._runners:
            self._runners[key] = (_session(self.path) if runtime == "onnxruntime"
                                  else _openvino_model(self.path, precision))
        runner = self._runners[key]
        array = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if runtime == "onnxruntime":
            (embeds,) = runner.run(None, {runner.get_inputs()[0].name: array})
            return embeds
        return np.array(runner(array)[0], dtype=np.float32)  # a copy: OpenVINO reuses its buffer

    def __call__(self, pixel_values: Any, precision: str = "fp32") -> Any:
        """Tensor in, tensor out (the PyTorch pipeline's call)."""
        import torch

        array = pixel_values.detach().to(torch.float32).cpu().numpy()
        return torch.from_numpy(self.run(array, precision))


def export_image_tower(model: Any, folder: str | os.PathLike, batch: int = 4) -> dict[str, Any]:
    """Export `model`'s image tower to `folder`/image_tower.onnx (+ its info JSON), atomically.

    The export is checked before it is kept: ONNX Runtime and PyTorch must agree on a random
    batch to `EXPORT_CHECK_TOLERANCE`, else nothing is written. Returns the info record.
    """
    import torch

    _require_runtime("onnxruntime")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder; export into the folder "
                                "that holds config.json and model.safetensors.")
    was_training = model.training
    model.eval()
    size = int(model.config.patch_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(batch, 3, size, size, generator=generator)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=folder))
    try:
        graph = _tower_graph(model).eval()
        target = tmp / ONNX_TOWER_FILENAME
        with torch.no_grad():
            reference = graph(example).numpy()
        program = torch.onnx.export(
            graph, (example,), dynamo=True, verbose=False, input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
        )
        # one self-contained file (weights inside; an image tower is far below ONNX's 2 GB
        # limit), so the folder never holds an .onnx whose external data went missing
        program.save(os.fspath(target), external_data=False)
        extra = sorted(p.name for p in tmp.iterdir() if p.name != ONNX_TOWER_FILENAME)
        if extra:
            raise ValueError(f"the ONNX export wrote unexpected files {extra}; nothing was kept.")
        session = _session(target)
        (out,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        difference = float(abs(out - reference).max())
        if not difference <= EXPORT_CHECK_TOLERANCE:
            raise ValueError(
                f"the ONNX export disagrees with PyTorch by {difference:.3g} (tolerance "
                f"{EXPORT_CHECK_TOLERANCE}); nothing was written. Predict with --backend torch."
            )
        import onnxruntime

        info = {
            "format": "mclstexp-image-tower-onnx", "file": ONNX_TOWER_FILENAME,
            "fingerprint": tower_fingerprint(model), "patch_size": size,
            "encoder_input_size": model.config.encoder_input_size,
            "image_encoder": model.config.image_encoder,
            "max_abs_difference_vs_torch": difference, "check_batch": batch,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / ONNX_TOWER_INFO_FILENAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
        # data first, then the record that vouches for it: a half-replaced pair never matches
        os.replace(target, folder / ONNX_TOWER_FILENAME)
        os.replace(tmp / ONNX_TOWER_INFO_FILENAME, folder / ONNX_TOWER_INFO_FILENAME)
        return info
    finally:
        for leftover in tmp.glob("*"):
            leftover.unlink()
        tmp.rmdir()
        model.train(was_training)


def read_export(folder: str | os.PathLike, fingerprint: str | None) -> tuple[dict[str, Any] | None, str]:
    """The export record of `folder` if it vouches for weights with `fingerprint`; else
    (None, why not, with the fix)."""
    folder = Path(folder)
    path, info_path = folder / ONNX_TOWER_FILENAME, folder / ONNX_TOWER_INFO_FILENAME
    if not path.is_file() or not info_path.is_file():
        return None, f"no {ONNX_TOWER_FILENAME} in {folder} (export it with `mclstexp onnx {folder}`)"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{info_path}: unreadable ({exc}); re-export with `mclstexp onnx {folder}`"
    if fingerprint is None or info.get("fingerprint") != fingerprint:
        return None, (f"{path} was exported from other weights than the checkpoint's (stale); "
                      f"re-export with `mclstexp onnx {folder}`")
    return info, "ok"


def load_onnx_tower(model: Any, folder: str | os.PathLike,
                    backend: str = "auto") -> tuple[OnnxImageTower | None, str]:
    """The exported tower of `folder` if it matches `model`'s weights; else (None, why not)."""
    info, why = read_export(folder, tower_fingerprint(model))
    if info is None:
        return None, why
    return OnnxImageTower(Path(folder) / ONNX_TOWER_FILENAME, info, backend), "ok"


def attach_onnx_tower(model: Any, folder: str | os.PathLike, backend: str = "auto") -> dict[str, Any]:
    """Set `model.onnx_image_tower` for `backend` "auto" (when a valid export exists and
    onnxruntime or openvino is installed) or "onnxruntime"/"openvino" (required: raises with
    the fix); returns the provenance record. Which runtime each call uses follows its
    precision (`precision_mclstexp.onnx_tower_runtime`)."""
    check_backend(backend)
    model.onnx_image_tower = None
    if backend == "torch":
        return {"image_tower_backend": "torch"}
    wanted = EXPORT_BACKENDS if backend == "auto" else (backend,)
    if not any(runtime_installed(name) for name in wanted):
        if backend != "auto":
            raise ImportError(_missing_runtime(backend))
        return {"image_tower_backend": "torch", "image_tower_backend_note": _missing_runtime(wanted[0])}
    tower, why = load_onnx_tower(model, folder, backend)
    if tower is None:
        if backend != "auto":
            raise ValueError(f"--backend {backend}: {why}.")
        return {"image_tower_backend": "torch", "image_tower_backend_note": why}
    model.onnx_image_tower = tower
    return {"image_tower_backend": backend if backend != "auto" else "onnx export",
            "image_tower_onnx_max_abs_difference": tower.info.get("max_abs_difference_vs_torch")}


__all__ = ["BACKENDS", "ONNX_TOWER_FILENAME", "ONNX_TOWER_INFO_FILENAME", "OnnxImageTower",
           "attach_onnx_tower", "check_backend", "checkpoint_tower_fingerprint", "digest_module_state",
           "export_image_tower", "load_onnx_tower", "read_export", "tower_fingerprint"]
