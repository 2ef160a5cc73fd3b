"""Train `MclSTExpModel` itself with `transformers.Trainer`, then save a complete checkpoint.

One code path for every mode: the Trainer (and, under `torchrun` / `accelerate launch`,
DistributedDataParallel) gets the model, whose `forward` returns the symmetric contrastive loss
for pixels (end-to-end, or a frozen encoder run every step) or for cached pooled encoder
features (`image_features`, the CPU profile). A frozen encoder has `requires_grad=False` and
is kept in eval mode by `freeze_encoder_for_training` (BatchNorm statistics never move). The
spots of one batch form the spot tower's attention sequence; under several processes each
process's batch is its own sequence of `batch_size` spots (global batch = batch × world size).

Every folder the run saves is a loadable predictor: the Trainer's intermediate `checkpoint-*`
folders get a spot bank of the training spots built at save time, and the final checkpoint
(`hub.checkpoint.write_checkpoint`: model, bank, image processor, remote code and
`training_info.json`) is written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub.checkpoint import TRAINING_INFO_FILE, write_checkpoint
from ..models.mclstexp.configuration_mclstexp import MAX_POSITION_LIMIT, MclSTExpConfig
from ..models.mclstexp.modeling_mclstexp import MclSTExpModel
from .bank import build_bank_from_dataset, check_dataset_genes
from .features import compute_image_features, recalibrate_batchnorm
from .profiles import DATASET_PRESETS, PROFILE_NAMES, TrainProfile, get_profile
from .ssl_pretrain import pretraining_record
from .torch_dataset import CachedFeatureDataset, SpotCollator, SpotPatchDataset

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FEATURE_CACHE_FILE = "image_features.safetensors"
STAGE_CACHE_FILE = "stage_features-{stage}.safetensors"
POSITION_TABLE_MULTIPLE = 64


@dataclass
class TrainResult:
    """What a training run produced. `seconds` is the wall time of the whole run."""

    model: MclSTExpModel
    checkpoint_dir: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_spots: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # feature/train/bank seconds
    retrieval_selection: dict[str, Any] | None = None  # the inner-CV curve (select_retrieval)


# ------------------------------------------------------------------------- config
def derive_max_position(positions: torch.Tensor) -> int:
    """Rows per position table: the largest array coordinate + 1, rounded up to a multiple of 64.

    The reference allocates 65,536 rows per table (≈ 400 MB at 785 genes) although array
    coordinates of ST/Visium stay below a few hundred; sizing the tables from the data makes
    checkpoints ~50x smaller and changes no used row.
    """
    high = int(torch.as_tensor(positions).max()) + 1 if len(positions) else 1
    if high > MAX_POSITION_LIMIT:
        raise ValueError(
            f"array coordinates reach {high - 1:,}, beyond max_position's limit of "
            f"{MAX_POSITION_LIMIT:,} rows per position table (the tables would need "
            f"{2 * high * 4 * 1000 / 2**30:.1f}+ GiB). The dataset's `position` (array_x, "
            "array_y) must be spot-grid indices (tens to hundreds), not pixels: rebuild the "
            "dataset from a spot file whose x/y columns are grid indices."
        )
    return max(POSITION_TABLE_MULTIPLE, math.ceil(high / POSITION_TABLE_MULTIPLE) * POSITION_TABLE_MULTIPLE)


def build_training_config(
    gene_names: list[str],
    *,
    dataset_preset: str = "her2st",
    config_overrides: dict[str, Any] | None = None,
    positions: torch.Tensor | None = None,
    patch_size: int | None = None,
    expression_transform: str | None = None,
    expression_units: str | None = None,
) -> MclSTExpConfig:
    """Config from the genes, the dataset preset (retrieval k) and explicit overrides.

    Precedence: overrides > values derived from the data (max_position, patch_size) > preset.
    """
    if dataset_preset not in DATASET_PRESETS:
        raise ValueError(
            f"Unknown dataset preset {dataset_preset!r}; choose one of {sorted(DATASET_PRESETS)}."
        )
    overrides = dict(config_overrides or {})
    if "gene_names" in overrides:
        raise ValueError("Pass the genes as `gene_names`, not inside config_overrides.")
    values: dict[str, Any] = {"retrieval_k": DATASET_PRESETS[dataset_preset]["retrieval_k"]}
    if positions is not None:
        values["max_position"] = derive_max_position(positions)
    if patch_size is not None:
        values["patch_size"] = int(patch_size)
    if expression_transform is not None:
        values["expression_transform"] = expression_transform
    if expression_units is not None:
        values["expression_units"] = expression_units
    values.update(overrides)
    if patch_size is not None and values["patch_size"] != patch_size:
        raise ValueError(
            f"config_overrides sets patch_size={values['patch_size']} but the dataset's patches "
            f"are {patch_size} px; rebuild the dataset with --patch-size {values['patch_size']}."
        )
    return MclSTExpConfig(gene_names=list(gene_names), **values)


def load_pretrained_encoder(model: MclSTExpModel, source: str | Mapping[str, torch.Tensor]) -> None:
    """Load image-encoder weights after construction (never in `__init__`).

    `source` is a state dict in memory (e.g. a frozen encoder handed over by the benchmark),
    a local state-dict file (.safetensors / .pth / .bin, timm or torchvision key names;
    `classifier.*` is ignored) or a timm Hub id such as "timm/densenet121.tv_in1k".
    """
    target = model.image_encoder.model
    record = pretraining_record(source)
    if record is not None:
        pretrained_at = record["settings"]["encoder_input_size"] or record["settings"]["window"]
        sees = model.config.encoder_input_size or model.config.patch_size
        if pretrained_at != sees:
            raise ValueError(
                f"--pretrained-encoder {source}: pretrained on {pretrained_at} px views (`mclstexp "
                f"pretrain`), but this model's encoder sees {sees} px; pass "
                f"--encoder-input-size {pretrained_at}."
            )
    if isinstance(source, Mapping):
        state = dict(source)
        source = "the given state dict"
    elif os.path.isfile(source):
        if source.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(source)
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:
        import timm

        name = source.removeprefix("hf-hub:").removeprefix("hf_hub:")
        pretrained = timm.create_model(
            f"hf-hub:{name}" if "/" in name else name,
            pretrained=True,
            num_classes=0,
            global_pool="",
        )
        state = pretrained.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head."))}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(
            f"Pretrained encoder weights from {source!r} do not fit {model.config.image_encoder!r}: "
            f"{len(missing)} missing keys, e.g. {missing[:5]}. Pass weights of the same "
            "architecture (--image-encoder)."
        )
    if unexpected:
        logger.warning("Ignored %d unexpected encoder keys from %s", len(unexpected), source)


# ------------------------------------------------------------------ frozen encoder
def freeze_encoder_for_training(
    model: MclSTExpModel, through: str | None = None
) -> torch.utils.hooks.RemovableHandle:
    """Freeze the image encoder for training: no gradients, eval mode at every forward.

    The Trainer calls `model.train()` before every step, which would put the encoder's
    BatchNorm layers back into train mode (moving their statistics when pixels go through it).
    A forward pre-hook puts the encoder back into eval mode right before each forward. Remove
    the returned handle to end it (`requires_grad` stays False).

    through: freeze only the encoder's stages up to and including this one (partial
    fine-tuning, `TrainProfile.cache_stage`); the later stages stay trainable, in train mode.
    """
    frozen = ([model.image_encoder] if through is None
              else model.image_encoder.trunk_stages(through))
    for module in frozen:
        module.requires_grad_(False)

    def keep_encoder_in_eval(module: nn.Module, args: Any, kwargs: Any) -> None:
        for part in frozen:
            if part.training:
                part.eval()

    return model.register_forward_pre_hook(keep_encoder_in_eval, with_kwargs=True)


def _cached_views(model: MclSTExpModel, spots: SpotPatchDataset, prof: TrainProfile,
                  cache: str | None, progress: bool, stage: str | None = None) -> torch.Tensor:
    """The profile's cached views of `spots` (view 0 clean when include_clean_view, then the
    n_feature_views augmented ones): pooled features, or feature maps after `stage`."""
    common = {"seed": prof.seed, "bf16": prof.bf16, "channels_last": prof.channels_last,
              "progress": progress, "stage": stage}
    views = []
    if prof.include_clean_view:
        views.append(compute_image_features(
            model, spots, 1, augment=False,
            cache_path=cache and cache.replace(".safetensors", "-clean.safetensors"), **common))
    if prof.n_feature_views > 0:
        views.append(compute_image_features(
            model, spots, prof.n_feature_views, augment=True, cache_path=cache, **common))
    return torch.cat(views)


def _trainer_classes():
    """Trainer subclass and callbacks, built lazily (importing the Trainer is slow)."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class MclSTExpTrainer(Trainer):
        """The reference's optimiser (AdamW, weight decay on *every* trainable parameter), and
        checkpoints that predict: each save first embeds `bank_spots` as the spot bank.
        """

        bank_spots: SpotPatchDataset | None = None
        bank_gene_names: list[str] | None = None
        bank_metadata: dict[str, Any] | None = None
        micro_batch: int | None = None  # TrainProfile.micro_batch

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.micro_batch is None or inputs.get("pixel_values") is None:
                return super().training_step(model, inputs, num_items_in_batch)
            from .micro_batch import micro_batched_backward

            model.train()
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                return micro_batched_backward(
                    self.accelerator.unwrap_model(model), inputs["pixel_values"],
                    inputs["expression"], inputs["positions"], self.micro_batch,
                    loss_scale=1.0 / self.current_gradient_accumulation_steps,
                    autocast=self.accelerator.autocast)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            # save_pretrained writes the attached bank next to the weights (spot_bank.safetensors);
            # the bank is built in eval mode without randomness, so training is unaffected.
            if self.bank_spots is not None and self.args.should_save:
                model = self.accelerator.unwrap_model(self.model)
                build_bank_from_dataset(
                    model, self.bank_spots, progress=False, gene_names=self.bank_gene_names,
                    dataset_metadata=self.bank_metadata,
                )
            super()._save(output_dir, state_dict=state_dict)

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                params = [p for p in opt_model.parameters() if p.requires_grad]
                self.optimizer = torch.optim.AdamW(
                    params,
                    lr=self.args.learning_rate,
                    weight_decay=self.args.weight_decay,
                    betas=(self.args.adam_beta1, self.args.adam_beta2),
                    eps=self.args.adam_epsilon,
                )
            return self.optimizer

    class HistoryCallback(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                entry = {k: v for k, v in logs.items() if k != "total_flos"}
                entry["step"] = state.global_step
                self.history.append(entry)

    class CompactProgress(ProgressCallback):
        """The Trainer's progress bar, with the loss as a postfix instead of a line per log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            bar = self.training_bar
            if state.is_world_process_zero and bar is not None and logs and "loss" in logs:
                bar.set_postfix(loss=f"{logs['loss']:.4f}", epoch=f"{logs.get('epoch', 0):.1f}")

    return MclSTExpTrainer, HistoryCallback, CompactProgress


# -------------------------------------------------------------------- checkpoints
def is_training_out_dir(path: Path) -> bool:
    """A folder a training run may replace: a checkpoint of ours, or only our Trainer state."""
    from ..outputs import is_checkpoint_folder

    path = Path(path)
    if not path.is_dir():
        return False
    entries = set(os.listdir(path))
    return is_checkpoint_folder(path) or (bool(entries) and entries <= {CHECKPOINTS_DIR})


def _prepare_out_dir(
    out_dir: str, resume: bool, inputs: Iterable[str | os.PathLike | None] = ()
) -> None:
    """The final checkpoint replaces `out_dir` whole, so only an empty one (or, to resume, one
    holding this run's own state) is accepted. Never an input, nor a folder holding one.

    An absent or empty `out_dir` is this run's own (the caller knows that before the call):
    a failed or interrupted run removes it, so a rerun starts clean.
    """
    from ..outputs import OutputRefused, check_not_an_input

    check_not_an_input(out_dir, inputs)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--out {out_dir} is a file, not a checkpoint folder; choose another --out.")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not resume:
            raise FileExistsError(
                f"{out_dir} is not empty (a checkpoint, training state or other files); pass "
                "--resume (resume=True) to continue a run there, or choose another --out."
            )
        if not is_training_out_dir(Path(out_dir)):
            raise OutputRefused(
                f"--out {out_dir} holds files that are neither an mclstexp checkpoint nor this "
                "trainer's checkpoints/ state; --resume would replace them. Choose another --out."
            )
        return
    os.makedirs(out_dir, exist_ok=True)


def _remove_own_out_dir(out_dir: str, existed_empty: bool) -> None:
    """Undo a failed run's `out_dir`: remove it (or empty it again if it existed empty)."""
    if not os.path.isdir(out_dir):
        return
    if existed_empty:
        for entry in os.listdir(out_dir):
            target = os.path.join(out_dir, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)


def resolve_retrieval_k(
    dataset_preset: str, config_overrides: Mapping[str, Any] | None, n_bank_spots: int
) -> tuple[int | None, str | None]:
    """The retrieval k the checkpoint gets, given a bank of `n_bank_spots` training spots.

    An explicit k (`config_overrides['retrieval_k']`, i.e. `--retrieval-k`) larger than the bank
    is refused: the checkpoint could never predict. The preset's k is clamped to the bank size
    with a warning (returned, recorded in training_info.json). Returns (k to set or None, warning).
    """
    overrides = dict(config_overrides or {})
    if "retrieval_k" in overrides:
        k = overrides["retrieval_k"]
        if isinstance(k, int) and not isinstance(k, bool) and k > n_bank_spots:
            raise ValueError(
                f"--retrieval-k {k} exceeds the {n_bank_spots} training spots that form the "
                "checkpoint's spot bank, so the checkpoint could not predict; pass --retrieval-k "
                f"<= {n_bank_spots} or train on more sections."
            )
        return None, None
    preset_k = int(DATASET_PRESETS[dataset_preset]["retrieval_k"])
    if preset_k <= n_bank_spots:
        return None, None
    return n_bank_spots, (
        f"retrieval_k: the {dataset_preset!r} preset's k={preset_k} exceeds the {n_bank_spots} "
        f"training spots (the spot bank); the checkpoint uses k={n_bank_spots}. Pass "
        "--retrieval-k to choose another k."
    )


# ----------------------------------------------------------------------- training
def resolve_profile(
    profile: str | TrainProfile, dataset_preset: str, **overrides: Any
) -> TrainProfile:
    """The profile with explicit overrides applied (None = keep the profile's value).

    Freezing the encoder means the cached-feature mode: a profile without cached views gets the
    cpu profile's number; unfreezing it drops the cached views. On a partial fine-tuning profile
    (cache_stage set) an explicit freeze_image_encoder drops the cache_stage: True gives the
    frozen cached-pooled-feature recipe, False end-to-end training.
    """
    base = get_profile(profile, dataset_preset) if isinstance(profile, str) else profile
    if not isinstance(base, TrainProfile):
        raise TypeError(f"profile must be one of {PROFILE_NAMES} or a TrainProfile; got {profile!r}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    freeze = changes.get("freeze_image_encoder")
    cpu_views = get_profile("cpu", dataset_preset).n_feature_views
    if freeze is not None and base.cache_stage is not None:
        # An explicit freeze choice replaces partial fine-tuning: True = the cpu profile's
        # cached pooled features, False = end to end (no cached views).
        views = changes.pop("n_feature_views", (base.n_feature_views or cpu_views) if freeze else 0)
        base = dataclasses.replace(base, cache_stage=None, freeze_image_encoder=freeze,
                                   n_feature_views=views)
        del changes["freeze_image_encoder"]
    elif freeze is False:
        changes.setdefault("n_feature_views", 0)
    elif freeze is True and base.n_feature_views == 0:
        changes.setdefault("n_feature_views", cpu_views)
    return base.replace(**changes)


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_positions(positions: torch.Tensor, max_position: int | None, dataset: str | None) -> None:
    """Refuse coordinates the position tables cannot index (negative, or >= max_position)."""
    if not len(positions):
        return
    where = f"dataset {dataset!r}" if dataset else "the dataset"
    low, high = int(positions.min()), int(positions.max())
    if low < 0:
        raise ValueError(
            f"{where}: array coordinates must be >= 0 (found {low}); rebuild the dataset from a "
            "spot file with grid indices."
        )
    if high >= MAX_POSITION_LIMIT:
        derive_max_position(positions)  # raises with the explanation
    if max_position is not None and isinstance(max_position, int) and high >= max_position:
        raise ValueError(
            f"--max-position {max_position} is too small: the array coordinates of {where} reach "
            f"{high}; pass --max-position >= {high + 1} or leave it out (derived from the data)."
        )


def train_model(
    train_dataset: Any,
    gene_names: list[str],
    out_dir: str | None,
    *,
    config_overrides: dict[str, Any] | None = None,
    profile: str | TrainProfile = "paper",
    dataset_preset: str = "her2st",
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    freeze_image_encoder: bool | None = None,
    cached_features: torch.Tensor | None = None,
    seed: int = 0,
    expression_transform: str | None = None,
    expression_units: str | None = None,
    resume: bool = False,
    progress: bool = True,
    pretrained_encoder: str | Mapping[str, torch.Tensor] | None = None,
    dataset_metadata: dict[str, Any] | None = None,
    max_steps: int | None = None,
    save_steps: int | None = None,
    keep_checkpoints: bool = False,
    callbacks: list[Any] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
    select_retrieval: bool = False,
    retrieval_k_grid: Sequence[int] | None = None,
) -> TrainResult:
    """Train an mclSTExp model on a patch dataset; optionally save a complete checkpoint.

    train_dataset: a `datasets.Dataset` from `load_st_dataset` (already filtered to the training
        sections) or a `SpotPatchDataset`.
    cached_features: (n_views, N, image_feature_dim) pooled features of exactly these spots (in
        dataset order, view 0 clean), from `compute_image_features` run on the encoder this call
        builds: same config, seed and `pretrained_encoder` (and, only if the profile sets
        `recalibrate_batchnorm`, after `recalibrate_batchnorm` on these training patches, which
        this call repeats). Frozen features do not depend on the fold, so they can be computed
        once for all spots and sliced per fold. Requires a frozen encoder.
    max_steps / save_steps: stop after / save every this many optimiser steps (tests, resuming).
    inputs: paths the run reads (the dataset, encoder weights); `out_dir` may not be or hold one.
    select_retrieval: choose retrieval_k and retrieval_weighting by leave-one-training-section-out
        validation over `retrieval_k_grid` (`--retrieval-k auto`, `training/select_k.py`); the
        curve and the choice go to training_info.json["retrieval_selection"] and the config.
    A run that fails or is interrupted removes the `out_dir` it created (nothing blocks a rerun);
    a resumed run keeps its Trainer state for the next --resume.
    Returns the trained model with its bank attached.
    """
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    started = time.perf_counter()
    rank, world_size = _world()
    is_main = rank == 0
    prof = resolve_profile(
        profile,
        dataset_preset,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        freeze_image_encoder=freeze_image_encoder,
        seed=seed,
    )
    grad_checkpointing_requested = prof.grad_checkpointing
    checkpointing, checkpointing_reason = prof.grad_checkpointing_choice(torch.cuda.is_available())
    prof = prof.replace(grad_checkpointing=checkpointing)
    if prof.micro_batch is not None and world_size > 1:
        raise ValueError(
            f"--micro-batch runs in one process; under torchrun / accelerate launch "
            f"(WORLD_SIZE={world_size}) leave it out: each process already holds only its "
            "share of the batch."
        )
    if cached_features is not None and not prof.freeze_image_encoder:
        raise ValueError(
            "cached_features need a frozen image encoder (freeze_image_encoder=True or "
            "profile='cpu'); a trainable encoder changes its features every step"
            + (" (a cache_stage profile caches its own feature maps)." if prof.cache_stage else ".")
        )
    meta = dict(dataset_metadata or {})
    if meta.get("gene_names") and list(meta["gene_names"]) != list(gene_names):
        raise ValueError(
            "gene_names differ from the dataset's own gene list (mclstexp_dataset.json); pass "
            "the dataset's genes (load_dataset_metadata(path)['gene_names'])."
        )
    expression_transform = expression_transform or meta.get("transform")
    expression_units = expression_units or meta.get("units")

    spots = (
        train_dataset
        if isinstance(train_dataset, SpotPatchDataset)
        else SpotPatchDataset(
            train_dataset,
            # with given features, pixels are needed only to re-estimate BatchNorm statistics
            decode_images=cached_features is None or prof.recalibrate_batchnorm,
            progress=progress and is_main,
        )
    )
    if len(spots) == 0:
        raise ValueError("The training dataset has no spots; check the training sections.")
    if spots.n_genes != len(gene_names):
        raise ValueError(
            f"The training dataset's expression has {spots.n_genes} genes but gene_names lists "
            f"{len(gene_names)}; pass the dataset's gene list (load_dataset_metadata(...)['gene_names'])."
        )
    patch_size = int(spots.patches.shape[-1]) if spots.patches is not None else None
    run_warnings: list[str] = []
    if select_retrieval and len(set(spots.sections)) < 2:
        raise ValueError(
            "--retrieval-k auto needs at least 2 training sections for leave-one-section-out "
            f"validation; got {sorted(set(spots.sections))}. Pass a number to --retrieval-k."
        )
    clamped_k, k_warning = resolve_retrieval_k(dataset_preset, config_overrides, len(spots))
    effective_overrides = {**prof.config_defaults(), **(config_overrides or {})}
    if clamped_k is not None:
        effective_overrides["retrieval_k"] = clamped_k
        run_warnings.append(k_warning)
        if is_main:
            print(f"warning: {k_warning}", file=sys.stderr)
    _check_positions(spots.positions, effective_overrides.get("max_position"),
                     meta.get("dataset_name"))
    own, existed_empty = False, False
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        existed_empty = os.path.isdir(out_dir) and not os.listdir(out_dir)
    try:
        if out_dir is not None and is_main:
            # this run's own folder when absent or empty — known before `_prepare_out_dir`
            # makes it, so an interrupt that lands while it is being made still removes it
            own = existed_empty or not os.path.lexists(out_dir)
            _prepare_out_dir(out_dir, resume, inputs)
        set_seed(prof.seed)
        config = build_training_config(
            gene_names,
            dataset_preset=dataset_preset,
            config_overrides=effective_overrides,
            positions=spots.positions,
            patch_size=patch_size,
            expression_transform=expression_transform,
            expression_units=expression_units,
        )
        model = MclSTExpModel(config)
        if pretrained_encoder:
            load_pretrained_encoder(model, pretrained_encoder)
        check_dataset_genes(model, gene_names, spots.n_genes)
        if prof.channels_last:
            model.image_encoder.to(memory_format=torch.channels_last)

        timings: dict[str, float] = {}
        ckpt_dir = os.path.join(out_dir, CHECKPOINTS_DIR) if out_dir is not None else None
        train_set: torch.utils.data.Dataset
        stage = prof.cache_stage
        stage_views = 0
        if stage is not None:
            # Partial fine-tuning: the frozen trunk's feature maps are cached once; the stages
            # after `stage` train on them (with the heads and the spot tower).
            if not model.image_encoder.head_stages(stage):  # also refuses unknown stages
                raise ValueError(
                    f"cache_stage {stage!r} is the encoder's last stage: nothing after it would "
                    f"train. Choose an earlier one of {model.image_encoder.stage_names}."
                )
            if spots.patches is None:
                raise ValueError("A cache_stage profile needs decoded patches (the `image` column).")
            t0 = time.perf_counter()
            if prof.recalibrate_batchnorm:
                recalibrate_batchnorm(model, spots, channels_last=prof.channels_last,
                                      progress=progress and is_main)
            cache = os.path.join(ckpt_dir, STAGE_CACHE_FILE.format(stage=stage)) if ckpt_dir else None
            maps = _cached_views(model, spots, prof, cache, progress and is_main, stage=stage)
            stage_views = int(maps.shape[0])
            train_set = CachedFeatureDataset(maps, spots.expression, spots.positions, stage=stage)
            timings["feature_seconds"] = time.perf_counter() - t0
        elif prof.freeze_image_encoder and (prof.n_feature_views > 0 or cached_features is not None):
            t0 = time.perf_counter()
            if cached_features is None:
                if prof.recalibrate_batchnorm:
                    recalibrate_batchnorm(model, spots, channels_last=prof.channels_last, progress=progress and is_main)
                cache = os.path.join(ckpt_dir, FEATURE_CACHE_FILE) if ckpt_dir else None
                cached_features = _cached_views(model, spots, prof, cache, progress and is_main)
            elif prof.recalibrate_batchnorm and spots.patches is not None:
                recalibrate_batchnorm(model, spots, channels_last=prof.channels_last, progress=False)
            expected = (len(spots), model.image_encoder.num_features)
            if cached_features.ndim != 3 or tuple(cached_features.shape[1:]) != expected:
                raise ValueError(
                    f"cached_features must be (n_views, {expected[0]}, {expected[1]}) — n_views × "
                    f"training spots × the encoder's feature width; got {tuple(cached_features.shape)}."
                )
            train_set = CachedFeatureDataset(cached_features, spots.expression, spots.positions)
            timings["feature_seconds"] = time.perf_counter() - t0
        else:
            if spots.patches is None:
                raise ValueError("Training from pixels needs decoded patches (the `image` column).")
            train_set = spots

        if prof.grad_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        freeze_handle = (freeze_encoder_for_training(model, through=stage)
                         if prof.freeze_image_encoder or stage is not None else None)
        trainable_parameters = {
            "total": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()
                                 if p.requires_grad),
        }
        collator = SpotCollator(config.pixel_scaling, augment=prof.augment,
                                channels_last=prof.channels_last, augmentation=prof.augmentation,
                                feature_stage=stage)

        steps_per_epoch = math.ceil(len(train_set) / (prof.batch_size * world_size))
        if save_steps is None:
            save_steps = steps_per_epoch * max(1, prof.epochs // 20)
        temp_output = None
        if ckpt_dir is None:
            temp_output = tempfile.TemporaryDirectory(prefix="mclstexp-train-")
        use_cpu = not torch.cuda.is_available()
        args = TrainingArguments(
            output_dir=ckpt_dir or temp_output.name,
            per_device_train_batch_size=prof.batch_size,
            num_train_epochs=prof.epochs,
            max_steps=max_steps or -1,
            learning_rate=prof.learning_rate,
            weight_decay=prof.weight_decay,
            lr_scheduler_type=prof.lr_scheduler,
            warmup_steps=float(prof.warmup_ratio) if prof.warmup_ratio else 0,  # float = ratio
            max_grad_norm=0.0,  # the reference does not clip gradients
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="steps" if ckpt_dir else "no",
            save_steps=save_steps,
            save_total_limit=1,
            seed=prof.seed,
            data_seed=prof.seed,
            bf16=prof.bf16,
            use_cpu=use_cpu,
            ddp_backend="gloo" if use_cpu and world_size > 1 else None,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            report_to="none",
            disable_tqdm=not progress,
        )
        trainer_cls, history_cls, progress_cls = _trainer_classes()
        history_cb = history_cls()
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=collator,
            callbacks=[history_cb, *(callbacks or [])],
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        # forward takes **kwargs, but its loss is a per-batch mean that ignores num_items_in_batch;
        # otherwise the Trainer would scale it by the number of processes under DDP.
        trainer.model_accepts_loss_kwargs = False
        trainer.bank_spots, trainer.bank_gene_names, trainer.bank_metadata = spots, list(gene_names), meta
        trainer.micro_batch = prof.micro_batch
        trainer.pop_callback(PrinterCallback)  # logs go to `history`, not one printed line per step
        if progress and trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(progress_cls())
        resume_from = None
        if resume and ckpt_dir and os.path.isdir(ckpt_dir):
            resume_from = get_last_checkpoint(ckpt_dir)
            if resume_from is None:
                logger.warning("resume: no checkpoint under %s; training from the start.", ckpt_dir)
        t0 = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        finally:
            if freeze_handle is not None:
                freeze_handle.remove()
            if temp_output is not None:
                temp_output.cleanup()
        timings["train_seconds"] = time.perf_counter() - t0

        model.eval()
        model.image_encoder.to(memory_format=torch.contiguous_format)
        t0 = time.perf_counter()
        bank = build_bank_from_dataset(
            model,
            spots,
            progress=progress and is_main,
            gene_names=gene_names,
            dataset_metadata=meta,
        )
        timings["bank_seconds"] = time.perf_counter() - t0
        selection = None
        if select_retrieval:
            from .select_k import DEFAULT_K_GRID, select_retrieval_by_inner_cv

            t0 = time.perf_counter()
            selection = select_retrieval_by_inner_cv(
                model, spots, k_grid=retrieval_k_grid or DEFAULT_K_GRID,
                # view 0 is the clean view (given features, or the profile's include_clean_view)
                image_features=(cached_features[0] if cached_features is not None and (
                    prof.include_clean_view or spots.patches is None) else None),
                progress=progress and is_main)
            model.config.retrieval_k = selection["retrieval_k"]
            model.config.retrieval_weighting = selection["retrieval_weighting"]
            timings["retrieval_selection_seconds"] = time.perf_counter() - t0
        seconds = time.perf_counter() - started
        history = [dict(h) for h in history_cb.history]
        if out_dir is not None and trainer.is_world_process_zero():
            info = {
                "profile": asdict(prof),
                "dataset_preset": dataset_preset,
                "config_overrides": config_overrides or {},
                "train_spots": len(spots),
                "train_sections": list(dict.fromkeys(spots.sections)),
                "dataset": meta.get("dataset_name"),
                "cached_feature_views": (
                    int(cached_features.shape[0]) if cached_features is not None else stage_views),
                "cached_feature_stage": stage,  # None: pooled features (or none cached)
                "trainable_parameters": trainable_parameters,
                "grad_checkpointing": {"requested": (
                    "auto" if grad_checkpointing_requested is None else grad_checkpointing_requested),
                    "enabled": prof.grad_checkpointing, "reason": checkpointing_reason},
                "world_size": world_size,
                "global_batch_size": prof.batch_size * world_size,
                "pretrained_encoder": (
                    "a state dict given in memory" if isinstance(pretrained_encoder, Mapping)
                    else pretrained_encoder
                ),
                # the self-supervised run behind it (`mclstexp pretrain`), when it is one
                "pretrained_encoder_record": pretraining_record(pretrained_encoder),
                "bank": dict(bank.metadata),
                "retrieval_k": model.config.retrieval_k,
                "retrieval_weighting": model.config.retrieval_weighting,
                "retrieval_selection": selection,
                "warnings": list(run_warnings),
                "seconds": seconds,
                **timings,
                "history": history,
            }
            # Replaces out_dir whole (it only holds this run's Trainer state): complete or absent.
            write_checkpoint(model, out_dir, training_info=info, overwrite=True,
                             keep=(CHECKPOINTS_DIR,) if keep_checkpoints else (), inputs=inputs,
                             is_ours=is_training_out_dir)
        if world_size > 1:
            trainer.accelerator.wait_for_everyone()  # every rank returns after the checkpoint exists
        return TrainResult(
            model=model,
            checkpoint_dir=out_dir,
            history=history,
            train_spots=len(spots),
            seconds=seconds,
            timings=timings,
            retrieval_selection=selection,
        )
    except BaseException:
        # Failed or interrupted (SIGINT/SIGTERM): remove this run's folder so nothing blocks a
        # rerun — unless the Trainer already saved a resumable checkpoint-* (kept for --resume).
        if own:
            saved = sorted(Path(out_dir, CHECKPOINTS_DIR).glob("checkpoint-*"))
            if saved:
                print(f"kept the resumable training state {saved[-1]}; rerun with --resume to "
                      f"continue, or remove {out_dir} to start over.", file=sys.stderr)
            else:
                _remove_own_out_dir(out_dir, existed_empty)
        raise


__all__ = [
    "TRAINING_INFO_FILE",
    "TrainResult",
    "build_training_config",
    "derive_max_position",
    "freeze_encoder_for_training",
    "load_pretrained_encoder",
    "resolve_profile",
    "train_model",
]
