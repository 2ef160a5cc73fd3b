"""`mclstexp benchmark`: build the data, train per fold, evaluate, compare with baselines.

For every fold of a section or patient split it runs, on exactly the same training and
held-out spots:

- ``mclstexp``: the method (`train_model` with the chosen profile), prediction by retrieval
  from its bank of the fold's training spots;
- ``bleep_ablation``: the same training without spot Transformer and position embeddings;
- ``topk_mean_frozen``: plain top-k mean retrieval on frozen encoder features;
- ``hest_ridge_probe``: PCA-256 + ridge on the same frozen features;

then writes per-fold reports and RESULTS/summary.{json,md,csv} (the contract read by
`mclstexp card`). Frozen encoder features are computed once (see `frozen_features`) and shared
by the cpu-profile training and both frozen-feature baselines.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mclstexp_hub.evaluation.metrics import SectionMetrics, average_metrics, evaluate_section
from mclstexp_hub.evaluation.plots import plot_r_distribution
from mclstexp_hub.evaluation.report import (
    write_csv,
    write_json,
    write_section_reports,
    write_text_atomic,
)
from mclstexp_hub.models.mclstexp.precision_mclstexp import resolve_precision
from mclstexp_hub.training.ssl_pretrain import pretraining_record

from .frozen_features import BN_CALIBRATIONS, FrozenFeatureStore
from .methods import FoldContext, MethodSettings, get_method, list_methods
from .paper_numbers import paper_reported
from .splits import Fold, make_folds
from .summary import summary_frame, summary_markdown

METHODS = tuple(list_methods())  # the registry's names (benchmark/methods.py), default order
DATASET_KINDS = __import__("mclstexp_hub.presets").presets.benchmark_datasets()  # one registry


@dataclass
class BenchmarkOptions:
    """Everything a benchmark run depends on (the CLI maps its flags 1:1 onto these)."""

    out: str
    dataset: str = "her2st"
    data_dir: str | None = None
    genes: str | None = None
    sections: list[str] | None = None
    split: str = "section"
    profile: str = "cpu"
    dataset_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    n_feature_views: int | None = None
    image_encoder: str | None = None
    encoder_input_size: int | None = None
    precision: str | None = None  # None: the profile's own bf16 flag (fp32 for every profile)
    pretrained_encoder: str | None = None
    retrieval_k: int | str | None = None  # "auto": chosen per fold by inner CV
    baseline_k: int | None = None
    ridge_alpha: str = "hest"
    bn_calibration: str | None = None
    folds: list[int] | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    keep_checkpoints: bool = False
    # raw folder of the dataset's reader kind: its sections with counts that are no benchmark
    # section form the bank of the `mclstexp_expression_bank` method (minus held-out patients)
    expression_bank: str | None = None
    overwrite: bool = False
    seed: int = 0
    progress: bool = True
    command: str | None = None


# ----------------------------------------------------------------------- helpers
def machine_description() -> str:
    """CPU model, core count, RAM, OS and torch version (printed and stored with results)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "RAM unknown"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB RAM"
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {ram}{gpu}; {platform.platform()}; "
            f"Python {platform.python_version()}; torch {torch.__version__}")


def profile_description(prof, paper_prof, bn_calibration: str, image_encoder: str,
                        pretrained_encoder: str | None, n_sections: int,
                        feature_input_size: int | None = None,
                        explicit_encoder: str | None = None) -> str:
    """How this run's training differs from the paper's, generated from the actual settings.

    `image_encoder` / `feature_input_size`: the frozen-feature model's encoder and input size
    (None = as cut); `explicit_encoder`: --image-encoder when given (it overrides a profile's)."""
    at = f" at {feature_input_size} px" if feature_input_size else ""
    encoder = f"{image_encoder}{at} " + (
        f"with weights from {pretrained_encoder}" if pretrained_encoder else "randomly initialised"
    )
    parts = []
    if prof.freeze_image_encoder:
        views = (("1 clean + " if prof.include_clean_view else "")
                 + f"{prof.n_feature_views} augmented views per training spot")
        bn = {"all": "BatchNorm statistics re-estimated once on the patches of all benchmark "
                     "sections (held-out images included, never their expression)",
              "train": "BatchNorm statistics re-estimated on each fold's training patches only",
              "none": "the encoder's own BatchNorm statistics"}[bn_calibration]
        parts.append(
            f"image encoder ({encoder}) FROZEN; {bn}; its pooled features cached once for "
            f"{views}; only the spot tower and both projection heads are trained"
        )
    elif getattr(prof, "cache_stage", None):
        views = (("1 clean + " if prof.include_clean_view else "")
                 + f"{prof.n_feature_views} augmented views per training spot")
        parts.append(
            f"partial fine-tuning: image encoder ({encoder}) FROZEN through `{prof.cache_stage}`,"
            f" its feature maps there cached once for {views}; the encoder's later stages, the "
            "spot tower and both projection heads are trained on them; frozen-feature baselines "
            f"use the whole frozen {image_encoder}"
        )
    else:
        own = explicit_encoder or prof.image_encoder or image_encoder
        size = (f" at {prof.encoder_input_size} px (patches resampled from the cut)"
                if prof.encoder_input_size else "")
        own_encoder = f"{own}{size} " + (
            f"with weights from {pretrained_encoder}" if pretrained_encoder else "randomly initialised")
        parts.append(f"end-to-end training of the image encoder ({own_encoder}) as in the paper, "
                     f"{prof.augmentation} augmentation per step; frozen-feature baselines use "
                     f"{encoder}{'' if at else ' on the patches as cut'}")
    parts.append(
        f"{prof.epochs} epochs (paper {paper_prof.epochs}), learning rate {prof.learning_rate:g} "
        f"(paper {paper_prof.learning_rate:g}), batch {prof.batch_size} (paper "
        f"{paper_prof.batch_size}), AdamW weight decay {prof.weight_decay:g} (paper "
        f"{paper_prof.weight_decay:g}), {prof.lr_scheduler} schedule"
    )
    if prof.bf16:
        parts.append("bf16 autocast")
    parts.append(f"{n_sections} sections (paper: 32 HER2+ sections)")
    return "; ".join(parts) + "."


# `build_dataset(..., allow_dropped_spots=True)`: the reference's inner join of spots and counts.
ALLOW_DROPPED_SPOTS = True

def _prepare_dataset(opts: BenchmarkOptions, progress: bool) -> Path:
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata
    from mclstexp_hub.data.preprocess import read_gene_panel

    if opts.dataset_dir:
        path = Path(opts.dataset_dir)
        if not path.is_dir():
            raise FileNotFoundError(
                f"--dataset-dir {path} not found; build it with `mclstexp data build` or leave "
                "--dataset-dir out to build it into RESULTS/dataset."
            )
    else:
        path = Path(opts.out) / "dataset"
        if not path.is_dir():
            if not opts.data_dir:
                raise ValueError(
                    "pass --data-dir (the raw data to build the dataset from) or --dataset-dir "
                    "(an already built patch dataset)."
                )
            # The reference code inner-joins spots and counts too: spots listed without a
            # counts row are dropped (counted in the dataset metadata), as theirs are.
            build_dataset(opts.dataset, opts.data_dir, path, sections=opts.sections,
                          genes_file=opts.genes, progress=progress,
                          allow_dropped_spots=ALLOW_DROPPED_SPOTS)
    meta = load_dataset_metadata(path)
    if opts.genes and read_gene_panel(opts.genes) != list(meta["gene_names"]):
        raise ValueError(
            f"{path}/mclstexp_dataset.json: its genes differ from --genes {opts.genes}; rebuild "
            "the dataset with that panel (or drop --genes to use the dataset's own)."
        )
    missing = [s for s in (opts.sections or []) if s not in meta["sections"]]
    if missing:
        raise ValueError(
            f"{path}: sections {missing} are not in the dataset (it has {meta['sections']}); "
            "rebuild it with those sections or choose others."
        )
    return path


def _section_rows(sections_of_spot: np.ndarray, sections: Sequence[str]) -> np.ndarray:
    return np.flatnonzero(np.isin(sections_of_spot, list(sections)))


def _run_key(**settings: Any) -> str:
    """Hash of everything a fold's result depends on; equal keys → the result can be reused."""
    payload = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _load_previous(fold_dir: Path, method: str, run_key: str) -> tuple[list, dict] | None:
    """Section results of `method` written by an earlier, identical run (resume), else None."""
    import pandas as pd

    metrics_path = fold_dir / f"{method}_metrics.json"
    genes_path = fold_dir / f"{method}_per_gene.csv"
    if not metrics_path.is_file() or not genes_path.is_file():
        return None
    try:
        payload = json.loads(metrics_path.read_text())
        if payload.get("run_key") != run_key:
            return None
        table = pd.read_csv(genes_path)
        results = []
        for row in payload["per_section"]:
            per_gene = table[table["section"].astype(str) == row["section"]].drop(
                columns="section").reset_index(drop=True)
            values = {k: (float("nan") if row[k] is None else row[k]) for k in
                      ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")}
            results.append(SectionMetrics(
                section=row["section"], n_spots=row["n_spots"], n_genes=row["n_genes"],
                n_nan_genes=row["n_nan_genes"], nan_genes=row["nan_genes"],
                heg_genes=row["heg_genes"], hvg_genes=row["hvg_genes"], n_top=row["n_top"],
                per_gene=per_gene, **values))
        return results, payload.get("details", {})
    except (KeyError, ValueError, OSError):
        return None


def _fold_summary(fold: Fold, results: list[SectionMetrics], **extra: Any) -> dict[str, Any]:
    mean = average_metrics(results)
    return {"fold": fold.fold, "held_out": list(fold.held_out),
            **{k: mean[k] for k in ("pcc_acg", "pcc_heg", "pcc_hvg", "mse", "mae")},
            "n_nan_genes": mean["n_nan_genes"],
            "per_section": [r.summary() for r in results], **extra}


# -------------------------------------------------------------------------- runner
def _expression_bank_sections(opts: BenchmarkOptions, meta: dict[str, Any],
                              gene_names: list[str], sections: list[str]) -> list[Any]:
    """The `--expression-bank` folder's sections with counts, minus the benchmark's own
    sections, in the dataset's panel and units (`read_expression_sections`)."""
    from mclstexp_hub.training.bank import read_expression_sections

    folder = Path(str(opts.expression_bank))
    transform = meta.get("transform")
    if not transform:
        raise ValueError(f"{opts.dataset_dir or opts.data_dir}: the dataset records no expression "
                         "transform, so counts cannot be put in its units for --expression-bank.")
    processed, _ = read_expression_sections(opts.dataset, folder, gene_names, transform,
                                            exclude_sections=sections)
    return processed


def run_benchmark(opts: BenchmarkOptions) -> dict[str, Any]:
    """Run the benchmark described by `opts`; returns the summary (also written to disk)."""
    from transformers import set_seed

    from mclstexp_hub import __version__
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.torch_dataset import SpotPatchDataset
    from mclstexp_hub.training.trainer import build_training_config

    started = time.perf_counter()
    # From raw data only the presets of one raw folder; an already built --dataset-dir (the
    # zoo's alex10x, a HEST build) may be of any registered preset.
    from mclstexp_hub.presets import preset_names

    known = tuple(preset_names()) if opts.dataset_dir else DATASET_KINDS
    if opts.dataset not in known:
        raise ValueError(f"benchmark dataset must be one of {known}; got {opts.dataset!r}.")
    if not opts.methods:
        raise ValueError(f"--methods must name at least one of {list_methods()}.")
    methods = {name: get_method(name) for name in opts.methods}  # unknown names: ValueError
    size = opts.encoder_input_size  # an explicit value (0 included) is used or refused
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 16):
        raise ValueError(f"--encoder-input-size must be an integer of at least 16 px; got {size!r}.")
    # resolved (unknown values refused) before any work; None: the profile's own flag
    bf16 = None if opts.precision is None else resolve_precision(opts.precision, "cpu") == "bf16"
    if opts.expression_bank is not None and not Path(str(opts.expression_bank)).is_dir():
        raise FileNotFoundError(f"--expression-bank {opts.expression_bank}: not a folder; pass "
                                f"the raw data folder of the {opts.dataset} reader (e.g. the "
                                "her2st data/).")
    out = Path(opts.out)
    if (out / "summary.json").exists() and not opts.overwrite:
        raise FileExistsError(
            f"{out}/summary.json exists: this folder holds a finished benchmark. Choose another "
            "--out or pass --overwrite."
        )
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    progress = opts.progress
    machine = machine_description()
    print(f"machine: {machine}", flush=True)

    # ------------------------------------------------------------------ data
    dataset_dir = _prepare_dataset(opts, progress)
    meta = load_dataset_metadata(dataset_dir)
    sections = list(opts.sections or meta["sections"])
    gene_names = list(meta["gene_names"])
    folds = make_folds(sections, opts.split, meta.get("patients") or {})
    if opts.folds is not None:
        bad = [i for i in opts.folds if not 0 <= i < len(folds)]
        if bad:
            raise ValueError(f"--folds {bad} out of range: this split has folds 0..{len(folds) - 1}.")
        folds_run = [f for f in folds if f.fold in set(opts.folds)]
    else:
        folds_run = folds
    # A tower pretrained on a held-out section's tiles (`mclstexp pretrain`) has seen it.
    pretrained_record = pretraining_record(opts.pretrained_encoder)
    for fold in folds_run:
        leaked = sorted(set((pretrained_record or {}).get("sections") or ()) & set(fold.held_out))
        if leaked:
            if created_out and not any(out.iterdir()):
                out.rmdir()  # refused before anything was written: leave nothing behind
            raise ValueError(
                f"--pretrained-encoder {opts.pretrained_encoder} was pretrained on tissue tiles of "
                f"{leaked}, held out in fold {fold.fold}: that fold would not be held out. "
                "Pretrain on the fold's training sections (`mclstexp pretrain --sections "
                f"{' '.join(fold.train)}`) and run it alone (--folds {fold.fold})."
            )
    thin = [f.fold for f in folds_run if len(f.train) < 2]
    if opts.retrieval_k == "auto" and thin:
        raise ValueError(
            f"--retrieval-k auto validates on left-out training sections, but fold(s) {thin} "
            "train on a single section; pass a number to --retrieval-k, or choose --folds / "
            "sections so that every fold trains on at least 2 sections."
        )
    expression_sections = None
    if opts.expression_bank is not None:  # read once, before any training; refused when empty
        expression_sections = _expression_bank_sections(opts, meta, gene_names, sections)
    dataset = load_st_dataset(dataset_dir, sections=sections)
    spots = SpotPatchDataset(dataset, progress=progress)
    spot_sections = np.asarray(spots.sections)
    expression = spots.expression.numpy()
    positions = spots.positions.numpy()

    # -------------------------------------------------------------- profile
    prof = get_profile(opts.profile, opts.dataset)
    changes: dict[str, Any] = {"seed": opts.seed}
    for name in ("epochs", "batch_size", "learning_rate", "n_feature_views", "encoder_input_size"):
        value = getattr(opts, name)
        if value is not None:
            changes[name] = value
    if bf16 is not None:
        changes["bf16"] = bf16
    prof = prof.replace(**changes)
    paper_prof = get_profile("paper", opts.dataset)
    bn_calibration = opts.bn_calibration or ("all" if prof.recalibrate_batchnorm else "none")
    if bn_calibration not in BN_CALIBRATIONS:
        raise ValueError(f"--bn-calibration must be one of {BN_CALIBRATIONS}; got {bn_calibration!r}.")
    base_overrides: dict[str, Any] = {"patch_size": int(meta.get("patch_size") or 224)}
    if opts.image_encoder:
        base_overrides["image_encoder"] = opts.image_encoder
    select_k = opts.retrieval_k == "auto"
    if opts.retrieval_k is not None and not select_k:
        if isinstance(opts.retrieval_k, bool) or not isinstance(opts.retrieval_k, int) or opts.retrieval_k < 1:
            raise ValueError(f"--retrieval-k must be a positive integer or 'auto'; got {opts.retrieval_k!r}.")
        base_overrides["retrieval_k"] = int(opts.retrieval_k)

    # Frozen-feature model: the same config and seed as the models train_model builds. Where
    # the profile's tower is frozen (wholly or through a stage), its input size is the
    # features' too: a frozen profile trains on these very features, so they must be its
    # encoder's. An end-to-end profile's baselines keep the encoder as cut.
    set_seed(opts.seed)
    feature_overrides = dict(base_overrides)
    if prof.encoder_input_size is not None and (
            prof.freeze_image_encoder or prof.cache_stage is not None):
        feature_overrides["encoder_input_size"] = prof.encoder_input_size
    feature_config = build_training_config(
        gene_names, dataset_preset=opts.dataset, config_overrides=feature_overrides,
        positions=spots.positions, expression_transform=meta.get("transform"),
        expression_units=meta.get("units"),
    )
    feature_model = MclSTExpModel(feature_config).eval()
    if opts.pretrained_encoder:
        from mclstexp_hub.training.trainer import load_pretrained_encoder

        load_pretrained_encoder(feature_model, opts.pretrained_encoder)
    ridge_alpha: str | float = opts.ridge_alpha
    if ridge_alpha not in ("hest", "cv"):
        try:
            ridge_alpha = float(ridge_alpha)
        except ValueError:
            raise ValueError(
                f"--ridge-alpha must be 'hest', 'cv' or a number; got {opts.ridge_alpha!r}."
            ) from None
    method_k = int(feature_config.retrieval_k)
    baseline_k = int(opts.baseline_k or method_k)
    n_views = prof.n_feature_views if prof.freeze_image_encoder else 0
    store = FrozenFeatureStore(
        feature_model, spots.patches, spots.sections, bn_calibration=bn_calibration,
        n_views=n_views, cache_dir=out / "features", seed=opts.seed,
        channels_last=prof.channels_last, bf16=prof.bf16, progress=progress,
        view_sections=sorted({s for f in folds_run for s in f.train}),
    )
    description = profile_description(
        prof, paper_prof, bn_calibration, feature_config.image_encoder, opts.pretrained_encoder,
        len(sections), feature_input_size=feature_config.encoder_input_size,
        explicit_encoder=opts.image_encoder,
    )
    print(f"profile {prof.name}: {description}", flush=True)

    settings = MethodSettings(
        profile=prof, retrieval_k="auto" if select_k else method_k,
        retrieval_weighting="auto" if select_k else feature_config.retrieval_weighting,
        retrieval_distance=feature_config.retrieval_distance, baseline_k=baseline_k,
        ridge_alpha=ridge_alpha, expression_bank=opts.expression_bank,
    )
    method_names = [m for m in opts.methods if methods[m].applies(settings)]
    for m in opts.methods:
        if m not in method_names:
            print(f"method {m}: {methods[m].skip_reason(settings)} (skipped)", flush=True)
    if not method_names:
        raise ValueError(f"none of --methods {opts.methods} applies to profile {prof.name}.")
    labels = {name: method.label(settings) for name, method in methods.items()}
    descriptions = {name: method.describe(settings) for name, method in methods.items()}
    # The frozen encoder state behind each FoldFeatures, captured in memory when it is computed
    # (the store's model holds exactly that state right after computing it).
    encoder_states: dict[int, dict[str, torch.Tensor]] = {}
    per_fold: dict[str, list[dict]] = {m: [] for m in method_names}
    section_results: dict[str, list[SectionMetrics]] = {m: [] for m in method_names}
    timings: dict[str, float] = {}

    dataset_id = {k: meta.get(k) for k in ("created", "gene_names", "transform", "n_spots")}
    run_key = _run_key(
        profile={k: getattr(prof, k) for k in prof.__dataclass_fields__},
        overrides=base_overrides, bn_calibration=bn_calibration, baseline_k=baseline_k,
        ridge_alpha=ridge_alpha, pretrained_encoder=opts.pretrained_encoder, seed=opts.seed,
        dataset=dataset_id, sections=sections, split=opts.split, version=__version__,
        # only when given, so that runs without it keep reusing earlier identical results
        **({"expression_bank": str(opts.expression_bank)} if opts.expression_bank else {}),
    )
    fold_iter = folds_run
    if progress:
        from tqdm.auto import tqdm

        fold_iter = tqdm(folds_run, desc="folds", unit="fold")
    for fold in fold_iter:
        fold_dir = out / "folds" / f"fold{fold.fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        train_rows = _section_rows(spot_sections, fold.train)
        test_rows_by_section = {s: _section_rows(spot_sections, [s]) for s in fold.held_out}
        test_rows = np.concatenate(list(test_rows_by_section.values()))
        if len(train_rows) == 0 or any(len(r) == 0 for r in test_rows_by_section.values()):
            raise ValueError(f"fold {fold.fold}: a training or held-out section has no spots.")
        previous = {m: _load_previous(fold_dir, m, run_key) for m in method_names}
        todo = [m for m in method_names if previous[m] is None]
        for m in method_names:
            if previous[m] is not None:
                print(f"fold {fold.fold} {m}: reusing the identical earlier result in {fold_dir}",
                      flush=True)
        if not todo:
            for method in method_names:
                results, info = previous[method]
                section_results[method].extend(results)
                per_fold[method].append(_fold_summary(fold, results, details=info))
            continue
        t0 = time.perf_counter()
        feats = store.for_fold(fold.train)
        timings[f"fold{fold.fold}_features"] = time.perf_counter() - t0
        if id(feats) not in encoder_states:
            encoder_states[id(feats)] = {
                k: v.detach().clone() for k, v in feature_model.image_encoder.model.state_dict().items()
            }
        predictions: dict[str, np.ndarray] = {}
        details: dict[str, dict] = {m: {} for m in method_names}
        fold_cache: dict[str, Any] = {}  # the fold's own trained model, shared by its methods
        # methods that keep their checkpoint first: the shared model is then trained by the
        # one that writes it, whatever the order of --methods
        for name in sorted(todo, key=lambda m: not methods[m].keeps_checkpoint):
            t0 = time.perf_counter()
            keep = methods[name].keeps_checkpoint and (
                opts.keep_checkpoints or fold.fold == folds_run[0].fold)
            ckpt = fold_dir / "checkpoint" if keep else None
            if ckpt is not None and ckpt.exists():
                shutil.rmtree(ckpt)  # a stale checkpoint of an interrupted run
            context = FoldContext(
                fold=fold, dataset=dataset, spots=spots, gene_names=gene_names, metadata=meta,
                train_rows=train_rows, test_rows=test_rows, expression=expression,
                spot_sections=spot_sections, features=feats,
                encoder_state=encoder_states[id(feats)] if prof.freeze_image_encoder else None,
                profile=prof, dataset_preset=opts.dataset, config_overrides=base_overrides,
                pretrained_encoder=opts.pretrained_encoder, baseline_k=baseline_k,
                ridge_alpha=ridge_alpha, seed=opts.seed, progress=progress,
                checkpoint_dir=None if ckpt is None else str(ckpt), select_retrieval=select_k,
                cache=fold_cache, expression_sections=expression_sections,
            )
            output = methods[name].run(context)
            predictions[name], details[name] = output.prediction, output.details
            timings[f"fold{fold.fold}_{name}"] = time.perf_counter() - t0

        # ------------------------------------------------------------ evaluate
        offsets = np.cumsum([0] + [len(r) for r in test_rows_by_section.values()])
        for method in method_names:
            if previous[method] is not None:
                results, info = previous[method]
                section_results[method].extend(results)
                per_fold[method].append(_fold_summary(fold, results, details=info))
                continue
            results, maps = [], {}
            for j, (section, rows) in enumerate(test_rows_by_section.items()):
                pred = predictions[method][offsets[j] : offsets[j + 1]]
                results.append(evaluate_section(pred, expression[rows], gene_names, section=section))
                maps[section] = (positions[rows], expression[rows], pred)
            write_section_reports(
                results, fold_dir, prefix=f"{method}_", maps=maps,
                extra={"method": method, "label": labels[method], "fold": fold.to_dict(),
                       "details": details[method], "run_key": run_key},
            )
            section_results[method].extend(results)
            per_fold[method].append(_fold_summary(fold, results, details=details[method]))
        spent = {k.split("_", 1)[1]: round(v, 1) for k, v in timings.items()
                 if k.startswith(f"fold{fold.fold}_")}
        print(f"fold {fold.fold} (held out {', '.join(fold.held_out)}): seconds {spent}",
              flush=True)

    # ---------------------------------------------------------------- summary
    methods_out = {}
    for method in method_names:
        methods_out[method] = {
            "label": labels[method],
            "description": descriptions[method],
            "per_fold": per_fold[method],
            "mean": average_metrics(section_results[method]),
        }
    plot_r_distribution(
        {labels[m]: np.concatenate([r.per_gene["pearson_r"].to_numpy()
                                    for r in section_results[m]]) for m in method_names},
        out / "r_distribution.png",
        title=f"Per-gene Pearson r, all held-out sections ({opts.split} split)",
    )
    gene_panel = opts.genes or meta.get("gene_panel_source") or "dataset genes.txt"
    summary = {
        "dataset": opts.dataset,
        "split": opts.split,
        "profile": prof.name,
        "profile_description": description,
        "gene_panel": str(gene_panel),
        "n_genes": len(gene_names),
        "expression_units": meta.get("units"),
        "expression_transform": meta.get("transform"),
        "sections": sections,
        "folds": [f.to_dict() for f in folds],
        "folds_run": [f.fold for f in folds_run],
        "methods": methods_out,
        "paper_reported": paper_reported(),
        "settings": {
            "profile": {k: getattr(prof, k) for k in prof.__dataclass_fields__},
            "bn_calibration": bn_calibration,
            "image_encoder": feature_config.image_encoder,
            "pretrained_encoder": opts.pretrained_encoder,
            "pretrained_encoder_record": pretrained_record,
            "feature_encoder_input_size": feature_config.encoder_input_size,
            "retrieval_k": "auto" if select_k else method_k,
            "baseline_k": baseline_k,
            "ridge_alpha": ridge_alpha,
            "retrieval_distance": feature_config.retrieval_distance,
            "retrieval_weighting": feature_config.retrieval_weighting,
            "seed": opts.seed,
            "expression_bank": opts.expression_bank,
            "expression_bank_sections": (None if expression_sections is None else
                                         [str(a.obs["section"].iloc[0]) for a in expression_sections]),
            "dataset_dir": str(dataset_dir),
            "allow_dropped_spots": ALLOW_DROPPED_SPOTS if not opts.dataset_dir else None,
        },
        "timings_seconds": timings,
        "command": opts.command or "(called from Python: run_benchmark)",
        "machine": machine,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "seconds": time.perf_counter() - started,
    }
    write_csv(summary_frame(summary), out / "summary.csv")
    write_text_atomic(summary_markdown(summary), out / "summary.md")
    write_json(summary, out / "summary.json")  # last: its presence means "finished"
    return summary


__all__ = ["METHODS", "BenchmarkOptions", "machine_description", "profile_description",
           "run_benchmark"]
