"""Self-supervised pretraining of the image tower on a slide's own unlabelled tissue.

No pretrained weights can be downloaded on an air-gapped machine, and the spots alone are few
(834 on the four imaged HER2+ sections). The tissue between and around the spots is not: a grid
over each section's tissue mask gives several times as many windows as there are spots. This
module trains the image tower on those windows with a SimCLR-style objective (Chen et al.,
ICML 2020): two augmented crops of the same window must be each other's nearest neighbour
among the 2B crops of a batch (normalised-temperature cross-entropy over cosine similarities,
through a small projection MLP that is thrown away afterwards).

Windows are read at the spot patch's scale (`window` full-resolution pixels, as the patch
dataset crops a spot) with a margin for random translation, resampled once to the size the
encoder sees (`encoder_input_size`, or `window` when None) and kept in memory as uint8. Each
step takes B windows, cuts two random crops of the encoder's size from each, and passes both
through the batched flips / rot90 / colour jitter of `training/augment.py` (with the jitter
strength given here).

The result is the tower's weights as one `.safetensors` file whose metadata carries the whole
run record (sections, images, tile count, every setting, the loss per epoch, the seconds), for
`mclstexp train --pretrained-encoder FILE` (`load_pretrained_encoder`), which copies that record
into `training_info.json`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SSL_METADATA_KEY = "mclstexp_ssl_pretraining"
"""safetensors metadata key of the run record (a JSON string)."""


@dataclass(frozen=True)
class SSLSettings:
    """Every knob of a pretraining run (recorded in the output).

    image_encoder / encoder_input_size: the tower to pretrain, as in the model config
        (`encoder_input_size` None = the encoder sees `window` px).
    window: side of a tile in full-resolution pixels (the spot patch's, 224 on HER2+).
    pitch: grid spacing of tile centres in full-resolution pixels (< window: overlapping tiles).
    min_tissue_fraction: a tile is kept when this fraction of its window is tissue.
    margin: extra context kept around each tile, as a fraction of the window, from which the
        two random crops are cut (0 = both views show the same pixels before augmentation).
    max_tiles: at most this many tiles in all (a seeded random subset; None = all).
    epochs / batch_size: passes over the tiles / tiles per step (2 crops each).
    learning_rate / weight_decay / warmup_ratio: AdamW with linear warm-up, then cosine decay.
    temperature: of the contrastive softmax. jitter: colour-jitter strength (0 = none; default
        the paper's training augmentation, 0.5: on HER2+ fold 0 it beat 0.2 and 0, docs/training.md).
    projection_dim: output size of the projection MLP (discarded after training).
    precision: "fp32" or "bf16" (autocast); channels_last: memory layout of the convolutions.
    """

    image_encoder: str = "densenet121"
    encoder_input_size: int | None = 112
    window: int = 224
    pitch: int = 112
    min_tissue_fraction: float = 0.5
    margin: float = 0.25
    max_tiles: int | None = None
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    warmup_ratio: float = 0.05
    temperature: float = 0.2
    jitter: float = 0.5  # the reference's ColorJitter strength, augment.JITTER (tested equal)
    projection_dim: int = 128
    precision: str = "fp32"
    channels_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("window", "pitch", "epochs", "batch_size", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"pretraining {name} must be a positive integer; got {value!r}.")
        if self.batch_size < 2:
            raise ValueError("pretraining batch_size must be at least 2 (the other tiles of a "
                             f"batch are the negatives); got {self.batch_size}.")
        self.tower_config()  # the model config's own checks of encoder and input size
        if self.max_tiles is not None and (not isinstance(self.max_tiles, int) or self.max_tiles < 2):
            raise ValueError(f"max_tiles must be an integer >= 2 or None; got {self.max_tiles!r}.")
        if not 0.0 < self.min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in (0, 1]; got {self.min_tissue_fraction!r}.")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1]; got {self.margin!r}.")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1); got {self.jitter!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio!r}.")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not self.temperature > 0:
            raise ValueError("learning_rate and temperature must be > 0 and weight_decay >= 0; got "
                             f"{self.learning_rate!r}, {self.temperature!r}, {self.weight_decay!r}.")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16' (resolved); got {self.precision!r}.")

    def tower_config(self):
        """The model config whose image tower this run pretrains (genes do not matter here)."""
        from ..models.mclstexp.configuration_mclstexp import MclSTExpConfig

        return MclSTExpConfig(gene_names=["_"], image_encoder=self.image_encoder,
                              encoder_input_size=self.encoder_input_size, patch_size=self.window)

    @property
    def view_size(self) -> int:
        """Side of a crop the encoder sees."""
        return self.encoder_input_size or self.window

    @property
    def stored_size(self) -> int:
        """Side of a stored tile (the view plus its margin), at the encoder's scale."""
        return round(self.view_size * (1.0 + self.margin))


# ------------------------------------------------------------------ tiles
def tissue_tiles(image_path: str | Path, settings: SSLSettings) -> tuple[np.ndarray, np.ndarray]:
    """(tiles (n, S, S, 3) uint8, centres (n, 2) full-res px) of one image's tissue grid.

    Centres lie on `tile_spots`' grid (the one `mclstexp predict --tile` uses) at `pitch`;
    each tile is the `window * (1 + margin)` px square around its centre, resampled to
    `stored_size` px (antialiased), so a crop of `view_size` px shows one spot-sized window.
    Windows that would leave the image are dropped.
    """
    from PIL import Image

    from ..models.mclstexp.slide_io_mclstexp import open_slide
    from ..prediction.tiling import tile_spots

    context = round(settings.window * (1.0 + settings.margin))
    size = settings.stored_size
    with open_slide(image_path) as slide:
        grid = tile_spots(slide, pitch=settings.pitch, patch_size=settings.window,
                          min_tissue_fraction=settings.min_tissue_fraction)
        half = context / 2
        inside = ((grid["pixel_x"] - half >= 0) & (grid["pixel_y"] - half >= 0)
                  & (grid["pixel_x"] + half <= slide.width) & (grid["pixel_y"] + half <= slide.height))
        grid = grid[inside.to_numpy()]
        tiles = np.empty((len(grid), size, size, 3), dtype=np.uint8)
        for i, (cx, cy) in enumerate(grid[["pixel_x", "pixel_y"]].to_numpy()):
            patch = slide.read_patch(cx, cy, context)
            if context != size:
                patch = np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR,
                                                                 reducing_gap=None))
            tiles[i] = patch
    return tiles, grid[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)


def collect_tiles(images: Sequence[str | Path], settings: SSLSettings
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Tiles of every image (a seeded subset of at most `max_tiles`) and a record per image."""
    parts, record = [], []
    for path in images:
        tiles, _ = tissue_tiles(path, settings)
        if not len(tiles):
            raise ValueError(
                f"{path}: no {settings.window} px window with >= {settings.min_tissue_fraction:.0%} "
                "tissue lies inside the image; lower --min-tissue-fraction or --window.")
        parts.append(tiles)
        record.append({"image": str(path), "tiles": len(tiles)})
    tiles = np.concatenate(parts)
    if settings.max_tiles is not None and len(tiles) > settings.max_tiles:
        keep = np.sort(np.random.default_rng(settings.seed).choice(
            len(tiles), settings.max_tiles, replace=False))
        tiles = tiles[keep]
    if len(tiles) < settings.batch_size:
        raise ValueError(f"only {len(tiles)} tissue tiles for batch size {settings.batch_size}; "
                         "lower --batch-size or --pitch.")
    return tiles, record


# ------------------------------------------------------------------ objective
def nt_xent_loss(z1, z2, temperature: float):
    """SimCLR's loss: each crop's positive is the other crop of its tile among 2B - 1 others.

    z1, z2: (B, d) projections of the two crops (normalised here). Mean over the 2B crops.
    """
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def random_crops(tiles, size: int, generator):
    """One random `size` px crop per tile of a (B, 3, S, S) uint8 batch."""
    import torch

    b, _, s, _ = tiles.shape
    if s == size:
        return tiles
    offsets = torch.randint(0, s - size + 1, (b, 2), generator=generator)
    return torch.stack([t[:, y:y + size, x:x + size] for t, (y, x) in zip(tiles, offsets.tolist())])


# ------------------------------------------------------------------ training
def pretrain_tower(
    images: Sequence[str | Path],
    settings: SSLSettings,
    *,
    sections: Sequence[str] = (),
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pretrain a fresh image tower on the tissue tiles of `images`.

    Returns (the tower's state dict, the run record). Seeded: the same images and settings give
    the same weights on the same machine and library versions.
    """
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    from ..models.mclstexp.modeling_mclstexp import MclSTExpImageTower
    from ..models.mclstexp.pixels_mclstexp import scale_pixel_values
    from ..models.mclstexp.precision_mclstexp import autocast
    from .augment import BatchAugmenter

    t_start = time.perf_counter()
    tiles, per_image = collect_tiles(images, settings)
    tile_seconds = time.perf_counter() - t_start

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    config = settings.tower_config()
    tower = MclSTExpImageTower(config)
    dim = tower.num_features
    projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True),
                              nn.Linear(dim, settings.projection_dim))
    if settings.channels_last:
        tower = tower.to(memory_format=torch.channels_last)
    params = list(tower.parameters()) + list(projector.parameters())
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = len(tiles) // settings.batch_size
    total = steps_per_epoch * settings.epochs
    warmup = round(settings.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    augment = BatchAugmenter(jitter=settings.jitter)
    pixels = torch.from_numpy(tiles).permute(0, 3, 1, 2)  # (n, 3, S, S) uint8 view

    def view(batch):
        x = scale_pixel_values(augment(random_crops(batch, settings.view_size, generator)),
                               config.pixel_scaling)
        return x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x

    history: list[dict[str, float]] = []
    tower.train()
    projector.train()
    bar = tqdm(total=total, desc="pretrain", unit="step", disable=not progress)
    t_train = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(tiles), generator=generator)
        losses = []
        for s in range(steps_per_epoch):
            batch = pixels[order[s * settings.batch_size:(s + 1) * settings.batch_size]]
            x = torch.cat([view(batch), view(batch)])
            with autocast(settings.precision):
                z = projector(tower(x))
            loss = nt_xent_loss(z[: len(batch)], z[len(batch):], settings.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pretraining loss became {loss.item()} at epoch {epoch + 1}, step {s + 1}; "
                    "lower --learning-rate.")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "seconds": time.perf_counter() - t_train})
    bar.close()

    state = {k: v.detach().contiguous() for k, v in tower.model.state_dict().items()}
    record = {
        "method": "SimCLR-style contrastive pretraining on unlabelled tissue tiles "
                  "(two random crops per tile, NT-Xent; projection MLP discarded)",
        "settings": asdict(settings),
        "sections": list(sections),
        "images": per_image,
        "tiles": len(tiles),
        "steps": int(total),
        "chance_loss": float(math.log(2 * settings.batch_size - 1)),
        "history": history,
        "tile_seconds": tile_seconds,
        "train_seconds": time.perf_counter() - t_train,
        "torch": torch.__version__,
    }
    return state, record


def save_pretrained_tower(state: dict[str, Any], record: dict[str, Any], path: str | Path) -> Path:
    """Write the tower's weights with the run record in the file's metadata (atomic)."""
    from safetensors.torch import save_file

    from ..outputs import publish_file, staging

    path = Path(path)
    with staging(path.parent, f".{path.name}.", file=True, suffix=".partial") as tmp:
        save_file(state, str(tmp), metadata={SSL_METADATA_KEY: json.dumps(record)})
        return publish_file(tmp, path)


def pretraining_record(source: Any) -> dict[str, Any] | None:
    """The run record of a file `save_pretrained_tower` wrote; None for any other source."""
    if not isinstance(source, (str, Path)) or not str(source).endswith(".safetensors"):
        return None
    if not Path(source).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        text = (handle.metadata() or {}).get(SSL_METADATA_KEY)
    return json.loads(text) if text else None


__all__ = [
    "SSL_METADATA_KEY",
    "SSLSettings",
    "collect_tiles",
    "nt_xent_loss",
    "pretrain_tower",
    "pretraining_record",
    "random_crops",
    "save_pretrained_tower",
    "tissue_tiles",
]
