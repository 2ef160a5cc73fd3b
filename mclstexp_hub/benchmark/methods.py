"""The benchmark's methods, registered by name (`@register_method`, as timm's `@register_model`).

A method is a function `fold context → predictions of the held-out spots`, registered with a
label and a description built from the run's settings. The runner loops over `list_methods()`
and never branches on a method's name; a new baseline is one decorated function here.

Importing this module is cheap (no torch): the CLI takes `--methods` choices from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MethodSettings:
    """What labels and descriptions say about a run (identical for every fold)."""

    profile: Any  # the TrainProfile
    retrieval_k: int | str  # "auto": chosen per fold by inner validation
    retrieval_weighting: str
    retrieval_distance: str
    baseline_k: int
    ridge_alpha: str | float
    expression_bank: str | None = None  # --expression-bank: the folder its sections come from


@dataclass
class FoldContext:
    """Everything a method may use for one fold: the same spots for every method.

    encoder_state: the frozen encoder's weights and BatchNorm statistics that produced
        `features` (handed to training in memory); None for an end-to-end profile.
    checkpoint_dir: where the method may keep its trained checkpoint (None: keep none).
    """

    fold: Any  # splits.Fold
    dataset: Any  # datasets.Dataset of all benchmark spots
    spots: Any  # SpotPatchDataset of the same rows
    gene_names: list[str]
    metadata: dict[str, Any]
    train_rows: np.ndarray
    test_rows: np.ndarray
    expression: np.ndarray  # (N, G) of all spots
    spot_sections: np.ndarray
    features: Any  # frozen_features.FoldFeatures
    encoder_state: dict[str, Any] | None
    profile: Any
    dataset_preset: str
    config_overrides: dict[str, Any]
    pretrained_encoder: str | None
    baseline_k: int
    ridge_alpha: str | float
    seed: int
    progress: bool
    checkpoint_dir: str | None = None
    select_retrieval: bool = False  # choose k and weighting by inner CV (--retrieval-k auto)
    # shared by the fold's methods: the run's own trained model (`_trained`), trained once
    cache: dict[str, Any] = field(default_factory=dict)
    # --expression-bank: preprocessed sections (model panel and units) with counts, none of
    # them a benchmark section; each method keeps those of patients not held out
    expression_sections: list[Any] | None = None


@dataclass
class MethodOutput:
    """Predictions (len(test_rows), G) in test-row order, and what to record about them."""

    prediction: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[FoldContext], MethodOutput]
    label: Callable[[MethodSettings], str]
    describe: Callable[[MethodSettings], str]
    keeps_checkpoint: bool = False  # its trained checkpoint is worth keeping (first fold)
    # whether the method adds anything under these settings (e.g. a frozen-encoder ablation
    # of a profile whose encoder is already frozen would repeat `mclstexp`)
    applies: Callable[[MethodSettings], bool] = lambda settings: True
    # what the run prints when `applies` is False
    skip_reason: Callable[[MethodSettings], str] = (
        lambda settings: f"adds nothing under profile {settings.profile.name}")


_METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    label: Callable[[MethodSettings], str],
    describe: Callable[[MethodSettings], str],
    keeps_checkpoint: bool = False,
    applies: Callable[[MethodSettings], bool] | None = None,
    skip_reason: Callable[[MethodSettings], str] | None = None,
) -> Callable[[Callable[[FoldContext], MethodOutput]], Callable[[FoldContext], MethodOutput]]:
    """Decorator: register `run(ctx) -> MethodOutput` as benchmark method `name`."""

    def decorator(run: Callable[[FoldContext], MethodOutput]) -> Callable[[FoldContext], MethodOutput]:
        if name in _METHODS:
            raise ValueError(f"benchmark method {name!r} is registered twice.")
        _METHODS[name] = Method(name=name, run=run, label=label, describe=describe,
                                keeps_checkpoint=keeps_checkpoint,
                                applies=applies or (lambda settings: True),
                                **({"skip_reason": skip_reason} if skip_reason else {}))
        return run

    return decorator


def list_methods() -> list[str]:
    """Registered method names, in registration order (the benchmark's default order)."""
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The registered method `name`; a ValueError lists the known names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown benchmark method {name!r}; known methods: {', '.join(_METHODS)}."
        ) from None


# ----------------------------------------------------------------------------- methods
def _retrieval_description(s: MethodSettings) -> str:
    if s.retrieval_k == "auto":
        return (f"retrieval k and weighting chosen per fold by leave-one-training-section-out "
                f"validation, over {s.retrieval_distance} distance")
    return f"retrieval k={s.retrieval_k}, {s.retrieval_weighting} weighting over {s.retrieval_distance} distance"


def _trained(ctx: FoldContext, extra_overrides: dict[str, Any], profile: Any = None):
    """(model in eval mode, TrainResult, profile, shared) trained on the fold's training spots.

    The trained model is used in memory (the object `train_model` returns). With a frozen
    encoder of the run's profile (`shared`), training gets the very encoder state that produced
    the shared cached features, so the cached clean features are the model's own image
    features. A different `profile` (an ablation) computes its own features instead. The run's
    own model (no overrides, the run's profile) is trained once per fold and kept in `ctx.cache`
    for every method that uses it.
    """
    from mclstexp_hub.training.trainer import train_model

    key = "mclstexp" if not extra_overrides and profile is None else None
    if key is not None and key in ctx.cache:
        return ctx.cache[key]
    prof = profile or ctx.profile
    shared = profile is None and prof.freeze_image_encoder  # the store's features are its own
    cached = (ctx.features.training_views(ctx.train_rows, prof.include_clean_view)
              if shared and prof.n_feature_views > 0 else None)
    # The feature store already calibrated BatchNorm; training must not re-estimate it.
    run_prof = prof.replace(recalibrate_batchnorm=False) if shared else prof
    result = train_model(
        ctx.dataset.select(ctx.train_rows.tolist()), ctx.gene_names, ctx.checkpoint_dir,
        config_overrides={**ctx.config_overrides, **extra_overrides}, profile=run_prof,
        dataset_preset=ctx.dataset_preset, cached_features=cached, seed=ctx.seed,
        pretrained_encoder=ctx.encoder_state if shared else ctx.pretrained_encoder,
        dataset_metadata=ctx.metadata, progress=ctx.progress,
        select_retrieval=ctx.select_retrieval,
    )
    trained = (result.model.eval(), result, prof, shared)
    if key is not None:
        ctx.cache[key] = trained
    return trained


def _image_embeds(ctx: FoldContext, model: Any, prof: Any, shared: bool, rows: np.ndarray):
    """Projected image embeddings (fp32) of the clean patches of `rows`."""
    import torch

    from mclstexp_hub.training.features import compute_image_features

    if shared:
        feats = ctx.features.clean[rows]
    else:
        feats = compute_image_features(model, ctx.spots.patches[torch.from_numpy(rows)], 1,
                                       progress=ctx.progress, channels_last=prof.channels_last)[0]
    with torch.no_grad():
        return model.get_image_features(image_features=feats.float()).pooler_output.float()


def _train_and_retrieve(ctx: FoldContext, extra_overrides: dict[str, Any],
                        profile: Any = None) -> MethodOutput:
    """Train on the fold's training spots (`_trained`), then predict the held-out ones from
    the model's bank (the fold's training spots)."""
    import torch

    model, result, prof, shared = _trained(ctx, extra_overrides, profile)
    embeds = _image_embeds(ctx, model, prof, shared, ctx.test_rows)
    k = min(int(model.config.retrieval_k), len(model.spot_bank))
    with torch.no_grad():
        prediction = model.predict_expression(image_embeds=embeds, k=k)
    final_loss = next((h["loss"] for h in reversed(result.history) if "loss" in h), None)
    return MethodOutput(
        prediction=prediction.expression.numpy(),
        details={"k": k, "weighting": model.config.retrieval_weighting,
                 "retrieval_selection": result.retrieval_selection,
                 "train_spots": result.train_spots, "train_seconds": result.seconds,
                 "final_loss": final_loss, "checkpoint": ctx.checkpoint_dir,
                 "frozen_encoder": prof.freeze_image_encoder,
                 "image_encoder": model.config.image_encoder,
                 "encoder_input_size": model.config.encoder_input_size},
    )


def frozen_ablation_profile(profile: Any) -> Any:
    """`profile` with its encoder frozen: the cpu profile's frozen recipe (cached clean + augmented
    views, heads and spot tower trained) on the same encoder, input size, augmentation and seed."""
    from mclstexp_hub.training.profiles import get_profile

    return get_profile("cpu").replace(
        name=f"{profile.name}-frozen", image_encoder=profile.image_encoder,
        encoder_input_size=profile.encoder_input_size, augmentation=profile.augmentation,
        seed=profile.seed, channels_last=profile.channels_last)


@register_method(
    "mclstexp",
    label=lambda s: "mclSTExp (ours)",
    describe=lambda s: (
        f"mclSTExp trained with the `{s.profile.name}` profile; {_retrieval_description(s)}, "
        "bank = the fold's training spots"
    ),
    keeps_checkpoint=True,
)
def mclstexp(ctx: FoldContext) -> MethodOutput:
    return _train_and_retrieve(ctx, {})


@register_method(
    "frozen_encoder_ablation",
    label=lambda s: "same, encoder frozen",
    describe=lambda s: (
        f"the `{s.profile.name}` profile's own encoder ({s.profile.image_encoder or 'config default'}"
        f", input {s.profile.encoder_input_size or 'as cut'} px, same seed) kept at its random "
        "init: cached features of 1 clean + 2 augmented views, spot tower + heads trained with "
        "the `cpu` profile's schedule; same retrieval. Isolates what learning the tower adds"
    ),
    applies=lambda s: not s.profile.freeze_image_encoder,
)
def frozen_encoder_ablation(ctx: FoldContext) -> MethodOutput:
    return _train_and_retrieve(ctx, {}, profile=frozen_ablation_profile(ctx.profile))


# k values tried against an expression bank (it is ~20x the training bank; the default grid
# stops at 400)
EXPRESSION_BANK_K_GRID = (25, 50, 100, 200, 400, 800, 1600)


@register_method(
    "mclstexp_expression_bank",
    label=lambda s: "mclSTExp, expression bank",
    describe=lambda s: (
        f"the fold's `mclstexp` model (the same training), its bank replaced by the spot tower's "
        f"embedding of the sections of {s.expression_bank} that have counts, are no benchmark "
        "section and belong to no held-out patient (expression + positions, no images); k "
        f"({'/'.join(map(str, EXPRESSION_BANK_K_GRID))}) and weighting chosen per fold by "
        "validation on each training section against that bank minus the section's patient"
    ),
    applies=lambda s: s.expression_bank is not None,
    skip_reason=lambda s: "needs --expression-bank DIR (sections with counts to build the bank from)",
)
def mclstexp_expression_bank(ctx: FoldContext) -> MethodOutput:
    from mclstexp_hub.training.bank import build_bank_from_sections
    from mclstexp_hub.training.select_k import select_retrieval_against_bank

    if not ctx.expression_sections:
        raise ValueError("mclstexp_expression_bank: no expression sections were loaded "
                         "(--expression-bank).")
    patients = {str(k): str(v) for k, v in (ctx.metadata.get("patients") or {}).items()}
    held_out = {patients.get(str(s), str(s)) for s in ctx.fold.held_out}
    kept = [a for a in ctx.expression_sections if str(a.obs["patient"].iloc[0]) not in held_out]
    if not kept:
        raise ValueError(f"fold {ctx.fold.fold}: every --expression-bank section belongs to a "
                         f"held-out patient ({sorted(held_out)}); nothing left for the bank.")
    model, result, prof, shared = _trained(ctx, {})
    bank = build_bank_from_sections(model, kept, progress=False, attach=False,
                                    source="benchmark --expression-bank")
    train_sections = ctx.spot_sections[ctx.train_rows]
    selection = select_retrieval_against_bank(
        bank, _image_embeds(ctx, model, prof, shared, ctx.train_rows),
        ctx.expression[ctx.train_rows], train_sections,
        [patients.get(str(s), str(s)) for s in train_sections],
        distance=model.config.retrieval_distance, k_grid=EXPRESSION_BANK_K_GRID)
    k, weighting = selection["retrieval_k"], selection["retrieval_weighting"]
    prediction = bank.retrieve(_image_embeds(ctx, model, prof, shared, ctx.test_rows), k,
                               model.config.retrieval_distance, weighting)[0]
    return MethodOutput(
        prediction=prediction.numpy(),
        details={"k": k, "weighting": weighting, "retrieval_selection": selection,
                 "bank_spots": len(bank), "bank_sections": list(bank.metadata["sections"]),
                 "excluded_patients": sorted(held_out), "train_spots": result.train_spots,
                 "train_seconds": result.seconds},
    )


def _bleep_description(settings: MethodSettings) -> str:
    from .baselines import BLEEP_ABLATION_OVERRIDES

    return ("same training, no spot Transformer and no position embeddings "
            f"({BLEEP_ABLATION_OVERRIDES}); same retrieval")


@register_method("bleep_ablation", label=lambda s: "BLEEP-style ablation", describe=_bleep_description)
def bleep_ablation(ctx: FoldContext) -> MethodOutput:
    from .baselines import BLEEP_ABLATION_OVERRIDES

    return _train_and_retrieve(ctx, BLEEP_ABLATION_OVERRIDES)


@register_method(
    "topk_mean_frozen",
    label=lambda s: f"top-{s.baseline_k} mean, frozen features",
    describe=lambda s: (
        f"cosine top-{s.baseline_k} training spots by frozen pooled encoder features (no "
        "training), plain mean of their expression"
    ),
)
def topk_mean_frozen(ctx: FoldContext) -> MethodOutput:
    from .baselines import topk_mean_predict

    k = min(ctx.baseline_k, len(ctx.train_rows))
    prediction = topk_mean_predict(ctx.features.clean[ctx.train_rows],
                                   ctx.expression[ctx.train_rows],
                                   ctx.features.clean[ctx.test_rows], k)
    return MethodOutput(prediction=prediction, details={"k": k})


def _ridge_description(settings: MethodSettings) -> str:
    alpha = {"hest": "= 100/(256·genes) as HEST-Benchmark",
             "cv": "chosen by leave-one-training-section-out CV"}.get(
                 str(settings.ridge_alpha), f"= {settings.ridge_alpha}")
    return (f"StandardScaler + PCA(256) + ridge (alpha {alpha}, with intercept) on frozen pooled "
            "encoder features, fitted on training spots only (HEST-Benchmark's probe)")


@register_method("hest_ridge_probe", label=lambda s: "HEST probe (PCA-256 + ridge)",
                 describe=_ridge_description)
def hest_ridge_probe(ctx: FoldContext) -> MethodOutput:
    from .baselines import ridge_probe_predict

    prediction, info = ridge_probe_predict(
        ctx.features.clean[ctx.train_rows], ctx.expression[ctx.train_rows],
        ctx.features.clean[ctx.test_rows], seed=ctx.seed, alpha=ctx.ridge_alpha,
        groups=ctx.spot_sections[ctx.train_rows],
    )
    return MethodOutput(prediction=prediction, details=info)


@register_method(
    "ridge_cv_probe", label=lambda s: "ridge probe, CV alpha",
    describe=lambda s: (
        "StandardScaler + PCA(256) + ridge on frozen pooled encoder features, alpha chosen by "
        "leave-one-training-section-out CV inside the training sections (grid 0.1-1e5, mean "
        "per-gene r); the strongest linear probe"
    ),
)
def ridge_cv_probe(ctx: FoldContext) -> MethodOutput:
    from .baselines import ridge_probe_predict

    prediction, info = ridge_probe_predict(
        ctx.features.clean[ctx.train_rows], ctx.expression[ctx.train_rows],
        ctx.features.clean[ctx.test_rows], seed=ctx.seed, alpha="cv",
        groups=ctx.spot_sections[ctx.train_rows],
    )
    return MethodOutput(prediction=prediction, details=info)


__all__ = [
    "FoldContext",
    "Method",
    "MethodOutput",
    "MethodSettings",
    "frozen_ablation_profile",
    "get_method",
    "list_methods",
    "register_method",
]
