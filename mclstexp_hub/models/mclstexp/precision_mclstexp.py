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


# `mclstexp predict` on a CPU with native bf16, precision `auto`: the checkpoint's fp32 ONNX
# export still serves runs of up to this many spots. The PyTorch bf16 tower is faster per
# patch, but the PyTorch path starts later (torch/transformers imports), which a small run
# never wins back. Measured on this project's 2-core AVX512-BF16 EPYC (README, Speed, run 9):
# fixed cost (2 spots) 9.84 s PyTorch vs 2.74 s PyTorch-free; tower alone (batch 32) 37.0
# patches/s bf16 vs 28.2 ONNX fp32; whole process on a 2,040-spot grid 80.6 s bf16 vs 78.6 s
# ONNX, i.e. 28.8 vs 26.9 spots/s once started: break-even ≈ 7.1 s / (1/26.9 - 1/28.8) ≈ 2,900.
AUTO_ONNX_MAX_SPOTS = 3000


def onnx_precision_refusal(precision: str | None, n_spots: int | None = None) -> str | None:
    """Why the fp32 ONNX export may not serve a CPU run at `precision`, or None when it may.

    fp32 (explicit, or `auto` without native bf16): it may. An explicit bf16: never. `auto` on
    a native-bf16 CPU: for up to AUTO_ONNX_MAX_SPOTS spots (an unknown count is not a refusal;
    the caller asks again once it knows)."""
    if resolve_precision(precision, "cpu") == "fp32":
        return None
    if precision not in (None, "auto"):
        return f"precision {precision} runs in PyTorch (bf16 autocast)"
    if n_spots is not None and n_spots > AUTO_ONNX_MAX_SPOTS:
        return (f"precision auto on a CPU with native bf16 and {n_spots} spots "
                f"(> {AUTO_ONNX_MAX_SPOTS}): PyTorch bf16 is faster at this size")
    return None


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


def onnx_tower_runs(model: Any, device: Any, precision: str) -> bool:
    """Whether the image tower runs from its ONNX Runtime export: one is attached to `model`
    (`onnx_tower_mclstexp.attach_onnx_tower`), the run is on the CPU and the resolved
    `precision` is fp32 (the export is fp32; bf16 runs in PyTorch). The one rule of the
    pipeline and of `mclstexp evaluate`."""
    on_cpu = getattr(device, "type", str(device).split(":")[0]) == "cpu"
    return getattr(model, "onnx_image_tower", None) is not None and on_cpu and precision == "fp32"


__all__ = [
    "AUTO_ONNX_MAX_SPOTS",
    "onnx_precision_refusal",
    "onnx_tower_runs",
    "PRECISIONS",
    "Precision",
    "autocast",
    "cpu_has_native_bf16",
    "prepare_pixels",
    "resolve_precision",
]
