"""Pooled image-encoder features, computed once and cached: the frozen-encoder training mode.

With the image encoder frozen, its pooled features of a patch never change during training, so
the CPU profile computes them once — for the clean patch and for several augmented views — and
trains the spot tower and both projection heads on them. The features are what
`model.image_encoder` returns (before `image_projection`), in eval mode.

Partial fine-tuning (the cpu-ft profile) caches, instead, the encoder's feature maps after a
frozen stage (`stage=`, e.g. DenseNet's "transition3": `model.image_encoder.trunk`), with the
same views, augmentation, seeding and cache files; the later stages then train on them.

A cache file is keyed by a hash of everything the features depend on: the encoder's weights
*and* buffers (BatchNorm statistics), its name, the pixel scaling, the number of views,
augmentation, seed, precision, the stage and the patch pixels; a changed encoder or data never
reuses a stale cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .torch_dataset import SpotPatchDataset

FEATURES_FORMAT = "mclstexp-image-features"


def _as_patches(dataset_or_patches: Any) -> torch.Tensor:
    """uint8 (N, 3, H, W) patches from a tensor, an (N, H, W, 3) array or a (patch) dataset."""
    if isinstance(dataset_or_patches, SpotPatchDataset):
        if dataset_or_patches.patches is None:
            raise ValueError("This SpotPatchDataset was built without images (decode_images=False).")
        return dataset_or_patches.patches
    if isinstance(dataset_or_patches, np.ndarray):
        array = dataset_or_patches
        if array.ndim == 4 and array.shape[-1] == 3:
            array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        dataset_or_patches = torch.from_numpy(array)
    if isinstance(dataset_or_patches, torch.Tensor):
        patches = dataset_or_patches
        if patches.dtype != torch.uint8 or patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(
                "patches must be uint8 (N, 3, H, W) (or a numpy (N, H, W, 3) array); got "
                f"{patches.dtype} {tuple(patches.shape)}."
            )
        if patches.shape[0] == 0:
            raise ValueError("No patches given (0 spots); nothing to compute features for.")
        return patches
    return SpotPatchDataset(dataset_or_patches).patches  # a datasets.Dataset


def _encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        raise ValueError("compute_image_features needs an MclSTExpModel (with .image_encoder).")
    return encoder


def encoder_fingerprint(model: nn.Module) -> str:
    """sha256 of the encoder's name, weights and buffers (BatchNorm statistics included)."""
    from ..models.mclstexp.onnx_tower_mclstexp import digest_module_state

    digest = hashlib.sha256()
    digest.update(str(getattr(model.config, "image_encoder", "")).encode())
    digest.update(f"input={getattr(model.config, 'encoder_input_size', None)}".encode())
    digest_module_state(digest, _encoder(model))
    return digest.hexdigest()


def patches_fingerprint(patches: torch.Tensor) -> str:
    digest = hashlib.sha256(str(tuple(patches.shape)).encode())
    digest.update(patches.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(model: nn.Module, patches: torch.Tensor, **settings: Any) -> str:
    payload = {
        "encoder": encoder_fingerprint(model),
        "patches": patches_fingerprint(patches),
        "pixel_scaling": model.config.pixel_scaling,
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load_cache(path: str, key: str) -> torch.Tensor | None:
    from safetensors import safe_open

    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FEATURES_FORMAT or meta.get("key") != key:
                return None
            return handle.get_tensor("features")
    except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, never trusted
        return None


def _save_cache(path: str, key: str, features: torch.Tensor) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({"features": features.contiguous()}, tmp, metadata={"format": FEATURES_FORMAT, "key": key})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _autocast(bf16: bool, device: torch.device):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def compute_image_features(
    model: nn.Module,
    dataset_or_patches: Any,
    n_views: int = 1,
    augment: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    *,
    cache_path: str | os.PathLike | None = None,
    bf16: bool = False,
    channels_last: bool = True,
    progress: bool = True,
    stage: str | None = None,
) -> torch.Tensor:
    """Pooled encoder features (n_views, N, image_feature_dim), eval mode, float32.

    augment=False gives the clean features (n_views must then be 1: every view would be the
    same). augment=True draws the paper's augmentation independently per patch and view from a
    generator seeded with `seed`, leaving torch's global RNG as it was.
    stage: instead of pooled features, the feature maps after this encoder stage (inclusive),
    `model.image_encoder.trunk(x, stage)`: (n_views, N, C, h, w), float32.
    """
    from ..models.mclstexp.pixels_mclstexp import scale_pixel_values

    if not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be a positive integer; got {n_views!r}.")
    if n_views > 1 and not augment:
        raise ValueError("n_views > 1 without augment=True would compute identical views.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size!r}.")
    patches = _as_patches(dataset_or_patches)
    key = None
    if cache_path is not None:
        cache_path = os.fspath(cache_path)
        stage_setting = {} if stage is None else {"stage": stage}  # pooled keys stay as they were
        key = _cache_key(
            model, patches, n_views=n_views, augment=augment, seed=seed, bf16=bf16,
            channels_last=channels_last, **stage_setting,
        )
        cached = _load_cache(cache_path, key)
        if cached is not None:
            return cached
    encoder = _encoder(model)
    if stage is not None:
        encoder.trunk_stages(stage)  # an unknown stage / unsplittable encoder fails here, early
    device = next(encoder.parameters()).device
    augmenter = None
    if augment:
        from .augment import PatchAugmenter

        augmenter = PatchAugmenter()
    n = patches.shape[0]
    out: torch.Tensor | None = None
    if stage is None:
        out = torch.empty((n_views, n, int(encoder.num_features)), dtype=torch.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_views * n, desc="image features", unit="spot", leave=False)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for view in range(n_views):
                for start in range(0, n, batch_size):
                    pixels = patches[start : start + batch_size]
                    if augmenter is not None:
                        pixels = augmenter(pixels)
                    x = scale_pixel_values(pixels, model.config.pixel_scaling).to(device)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with _autocast(bf16, device):
                        feats = encoder(x) if stage is None else encoder.trunk(x, stage)
                    if out is None:  # feature maps: their shape is known after the first batch
                        out = torch.empty((n_views, n, *feats.shape[1:]), dtype=torch.float32)
                    out[view, start : start + pixels.shape[0]] = feats.float().cpu()
                    if bar is not None:
                        bar.update(pixels.shape[0])
    finally:
        encoder.train(was_training)
        if bar is not None:
            bar.close()
    if cache_path is not None and key is not None:
        _save_cache(cache_path, key, out)
    return out


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    dataset_or_patches: Any,
    batch_size: int = 64,
    *,
    channels_last: bool = True,
    progress: bool = True,
) -> int:
    """Re-estimate the image encoder's BatchNorm running statistics on `dataset_or_patches`.

    Why: a randomly initialised encoder carries BatchNorm statistics of mean 0 / variance 1,
    which do not describe its activations on H&E patches, so in eval mode its layers are badly
    scaled. Forward passes in train mode (no gradients) with a cumulative average
    (momentum=None) replace them by the statistics of these patches. Weights are untouched.
    Returns the number of BatchNorm layers updated.
    """
    from ..models.mclstexp.pixels_mclstexp import scale_pixel_values

    patches = _as_patches(dataset_or_patches)
    encoder = _encoder(model)
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    device = next(encoder.parameters()).device
    was_training = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    iterator = range(0, patches.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="BatchNorm statistics", unit="batch", leave=False)
    try:
        for start in iterator:
            x = scale_pixel_values(patches[start : start + batch_size], model.config.pixel_scaling)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            encoder(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        encoder.train(was_training)
    return len(norms)


__all__ = [
    "compute_image_features",
    "encoder_fingerprint",
    "recalibrate_batchnorm",
]
