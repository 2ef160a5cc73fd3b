"""Numeric precision of the image tower: `auto`, `fp32` or `bf16` (autocast); both channels-last.

Why a choice at all: DenseNet-121 at 224 px on a 2-core AVX512-BF16 CPU runs at 77.9 ms/patch in
fp32 NCHW, 55.4 ms fp32 channels-last and 24.6 ms with bf16 autocast + channels-last (measured,
batch 32). `auto` takes bf16 where the hardware computes it natively — CPUs with AVX512-BF16 or
AMX, and CUDA GPUs that support bf16 — and fp32 elsewhere (emulated bf16 is slower than fp32).
Retrieval (cosine top-k, distance weights) always runs in fp32/fp64 on the embeddings.

Hub-bound remote code: imports only third-party packages; torch only where a tensor or a GPU
is involved (the CPU rule serves the PyTorch-free ONNX Runtime prediction path too).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(precision: str | None, device: Any = "cpu") -> str:
    """"auto" / None → "bf16" on native-bf16 hardware, else "fp32"; explicit values checked.

    `device`: a torch.device or its name ("cpu", "cuda:0"); torch is imported only for CUDA."""
    precision = "auto" if precision is None else str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    if kind == "cuda":
        import torch
    if precision == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision 'bf16' was requested but this GPU has no bf16 support; "
                             "use 'fp32' or 'auto'.")
        return "bf16"
    if precision == "fp32":
        return "fp32"
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and cpu_has_native_bf16() else "fp32"


# The checkpoint's ONNX export of the tower (fp32 weights) runs in one of two CPU runtimes:
# ONNX Runtime for fp32, OpenVINO for bf16 (its CPU plugin computes the convolutions in bf16
# when the CPU has native bf16, with fp32 accumulation, and needs no PyTorch). Measured on this
# project's 2-core AVX512-BF16 EPYC, DenseNet-121 at 224 px, batch 32, 2 threads: OpenVINO bf16
# 51.8 patches/s, PyTorch bf16 autocast channels-last 37.0, ONNX Runtime fp32 27.4, OpenVINO
# fp32 24.1 (so fp32 stays with ONNX Runtime). The `--backend` values that name the export:
EXPORT_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
BACKENDS: tuple[str, ...] = ("auto", "torch", *EXPORT_BACKENDS)  # `--backend` choices


@functools.cache
def runtime_installed(name: str) -> bool:
    """Whether the runtime package `name` can be imported (looked up once, not imported: the
    pipeline asks for every batch)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_runtime(backend: str, precision: str) -> tuple[str | None, str]:
    """The runtime that runs the tower's ONNX export on the CPU at resolved `precision` under
    `backend` ("auto", "torch", "onnxruntime", "openvino"), or (None, why not with the fix).

    fp32: ONNX Runtime (auto, onnxruntime) or OpenVINO (openvino). bf16: OpenVINO, only on a
    CPU with native bf16 — elsewhere OpenVINO would quietly compute fp32 while the output said
    bf16, so bf16 there runs in PyTorch (emulated)."""
    if backend == "torch":
        return None, "--backend torch"
    if precision == "bf16":
        if backend == "onnxruntime":
            return None, ("ONNX Runtime runs the export in fp32 only; bf16 runs in OpenVINO "
                          "(--backend openvino) or PyTorch")
        if not cpu_has_native_bf16():
            return None, "bf16 on a CPU without native bf16 runs in PyTorch"
    runtime = "onnxruntime" if precision == "fp32" and backend != "openvino" else "openvino"
    if not runtime_installed(runtime):
        return None, (f"{runtime} is not installed (`pip install 'mclstexp-hub[onnx]'`); "
                      f"the {precision} tower runs in PyTorch")
    return runtime, "ok"


# `mclstexp predict` on a CPU with native bf16, precision `auto`, when OpenVINO is not installed
# (so no bf16 runtime for the export): the fp32 export (ONNX Runtime) still serves runs of up
# to this many spots. The PyTorch bf16 tower is faster per patch, but the PyTorch path starts
# later (torch/transformers imports), which a small run never wins back. Measured on this
# project's 2-core AVX512-BF16 EPYC (README, Speed, run 9): fixed cost (2 spots) 9.84 s PyTorch
# vs 2.74 s PyTorch-free; tower alone (batch 32) 37.0 patches/s bf16 vs 28.2 ONNX fp32; whole
# process on a 2,040-spot grid 80.6 s bf16 vs 78.6 s ONNX, i.e. 28.8 vs 26.9 spots/s once
# started: break-even ≈ 7.1 s / (1/26.9 - 1/28.8) ≈ 2,900.
AUTO_ONNX_MAX_SPOTS = 3000


def export_plan(precision: str | None, backend: str = "auto",
                n_spots: int | None = None) -> tuple[str | None, str | None, str | None]:
    """How a CPU run at `precision` uses the tower's ONNX export: (runtime, precision it runs
    at, note) — or (None, None, why not) when it runs in PyTorch instead.

    The export runs at the resolved precision when a runtime serves it (`export_runtime`).
    Otherwise `auto` on a native-bf16 CPU (bf16 without a bf16 runtime for the export) falls
    back to the fp32 export, for up to AUTO_ONNX_MAX_SPOTS spots under `--backend auto` (an
    unknown count is not a refusal; the caller asks again once it knows); the note says so."""
    resolved = resolve_precision(precision, "cpu")
    runtime, why = export_runtime(backend, resolved)
    if runtime is not None:
        return runtime, resolved, None
    if resolved == "fp32" or precision not in (None, "auto") or backend == "openvino":
        return None, None, why
    runtime, fp32_why = export_runtime(backend, "fp32")
    if runtime is None:
        return None, None, fp32_why
    if backend == "auto" and n_spots is not None and n_spots > AUTO_ONNX_MAX_SPOTS:
        return None, None, (f"precision auto on a CPU with native bf16 and {n_spots} spots "
                            f"(> {AUTO_ONNX_MAX_SPOTS}), {why}: PyTorch bf16 is faster at this size")
    return runtime, "fp32", (f"precision auto: the fp32 ONNX export rather than PyTorch bf16 "
                             f"({why})" + ("" if n_spots is None else
                                           f" for {n_spots} spots (<= {AUTO_ONNX_MAX_SPOTS})"))


def autocast(precision: str, device: Any = "cpu"):
    """Context manager: bf16 autocast for "bf16", nothing for "fp32" (resolved precisions)."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_pixels(pixels: Any, precision: str) -> Any:
    """Channels-last memory layout, what oneDNN convolutions run fastest on, in bf16 *and* fp32
    (same numbers up to float rounding: DenseNet-121 fp32 ran 1.55x faster channels-last on this
    project's AVX2 CPU in benchmarks/bench_vs_reference.py)."""
    if pixels.ndim == 4:
        import torch

        return pixels.contiguous(memory_format=torch.channels_last)
    return pixels


def onnx_tower_runtime(model: Any, device: Any, precision: str) -> str | None:
    """The runtime that runs `model`'s attached ONNX export of the tower
    (`onnx_tower_mclstexp.attach_onnx_tower`) for a run on `device` at resolved `precision`,
    or None when the tower runs in PyTorch. The one rule of the pipeline and of `evaluate`."""
    tower = getattr(model, "onnx_image_tower", None)
    on_cpu = getattr(device, "type", str(device).split(":")[0]) == "cpu"
    if tower is None or not on_cpu:
        return None
    return export_runtime(tower.backend, precision)[0]


__all__ = [
    "AUTO_ONNX_MAX_SPOTS",
    "BACKENDS",
    "EXPORT_BACKENDS",
    "PRECISIONS",
    "Precision",
    "autocast",
    "cpu_has_native_bf16",
    "export_plan",
    "export_runtime",
    "onnx_tower_runtime",
    "prepare_pixels",
    "resolve_precision",
    "runtime_installed",
]
