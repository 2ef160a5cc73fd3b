"""`mclstexp benchmark`: cross-validated comparison of mclSTExp with baselines on real data."""

from __future__ import annotations

import argparse
import shlex

from mclstexp_hub.presets import benchmark_datasets
from mclstexp_hub.training.profiles import PROFILE_NAMES

from ._options import (
    add_batch_size_option,
    add_command,
    add_precision_option,
    add_run_options,
    check_choice,
    retrieval_k_value,
)

_ACTIONS: list[argparse.Action] = []


def command_line(args: argparse.Namespace) -> str:
    """The command as run, rebuilt from the parsed flags (works when called via `main(argv)`)."""
    parts = ["mclstexp", "benchmark", args.dataset]
    for action in _ACTIONS:
        value = getattr(args, action.dest, None)
        if value is None or value is False or action.dest in ("dataset", "command_line"):
            continue
        if action.dest == "seed" and value == action.default:
            continue
        flag = action.option_strings[0]
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _run(args: argparse.Namespace) -> int:
    from mclstexp_hub.benchmark.frozen_features import BN_CALIBRATIONS
    from mclstexp_hub.benchmark.methods import list_methods
    from mclstexp_hub.benchmark.runner import BenchmarkOptions, run_benchmark

    # choices that live in torch-importing modules are checked here, not by the parser
    check_choice("--bn-calibration", args.bn_calibration, BN_CALIBRATIONS)
    opts = BenchmarkOptions(
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        genes=args.genes,
        sections=args.sections,
        split=args.split,
        profile=args.profile,
        dataset_dir=args.dataset_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        n_feature_views=args.n_feature_views,
        image_encoder=args.image_encoder,
        encoder_input_size=args.encoder_input_size,
        precision=args.precision,
        pretrained_encoder=args.pretrained_encoder,
        retrieval_k=args.retrieval_k,
        baseline_k=args.baseline_k,
        ridge_alpha=args.ridge_alpha,
        bn_calibration=args.bn_calibration,
        folds=args.folds,
        methods=args.methods or list_methods(),
        keep_checkpoints=args.keep_checkpoints,
        expression_bank=args.expression_bank,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=not args.quiet,
        command=args.command_line or command_line(args),
    )
    summary = run_benchmark(opts)
    print()
    print(f"{'method':<34} {'PCC(ACG)':>9} {'PCC(HEG)':>9} {'PCC(HVG)':>9} {'MSE':>8} {'MAE':>8}")
    for method in summary["methods"].values():
        m = method["mean"]
        print(f"{method['label']:<34} {m['pcc_acg']:>9.4f} {m['pcc_heg']:>9.4f} "
              f"{m['pcc_hvg']:>9.4f} {m['mse']:>8.4f} {m['mae']:>8.4f}")
    print(f"\nwrote {args.out}/summary.json, summary.md, summary.csv "
          f"({summary['seconds'] / 60:.1f} min)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mclstexp_hub.benchmark.methods import list_methods  # no torch: cheap for --help

    p = add_command(
        subparsers, "benchmark",
        "train per fold, evaluate, and compare with baselines on the same folds", """
        Builds the patch dataset (or reuses --dataset-dir), trains one model per fold,
        predicts the held-out sections by retrieval and writes
        RESULTS/summary.{json,md,csv} with mclSTExp next to three baselines (BLEEP-style
        ablation, top-k mean retrieval and the HEST PCA+ridge probe on frozen encoder
        features) and, separately, the paper's reported numbers.""")
    p.add_argument("dataset", choices=list(benchmark_datasets()))
    p.add_argument("--data-dir", default=None, help="raw data folder (e.g. the her2st data/)")
    p.add_argument("--genes", default=None, help="gene panel file (e.g. her2st_785.txt)")
    p.add_argument("--sections", nargs="+", default=None,
                   help="sections to use (default: every imaged section of the dataset)")
    p.add_argument("--split", choices=["section", "patient"], default="section",
                   help="leave-one-section-out (paper) or leave-one-patient-out (leak-free)")
    p.add_argument("--profile", choices=list(PROFILE_NAMES), default="cpu",
                   help="training profile (cpu: frozen encoder + cached features; cpu-e2e: "
                        "a small encoder trained end to end at reduced input size; cpu-ft: "
                        "DenseNet-121's last block fine-tuned on cached transition3 maps; see docs)")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--dataset-dir", default=None,
                   help="an already built patch dataset (default: build into RESULTS/dataset)")
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    add_batch_size_option(p, None, "override the profile's batch")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--n-feature-views", type=int, default=None,
                   help="augmented feature views per spot (frozen-encoder profiles)")
    p.add_argument("--image-encoder", default=None, help="timm encoder (default densenet121)")
    p.add_argument("--encoder-input-size", type=int, default=None, metavar="PX",
                   help="resample patches to PX inside the model before the encoder "
                        "(default: the profile's; cpu-e2e 64)")
    # training and feature precision; by default the profile's own (fp32), so a benchmark's
    # figures do not depend on the CPU it ran on
    add_precision_option(p, default=None, default_text="the profile's own, fp32")
    p.add_argument("--pretrained-encoder", default=None,
                   help="encoder weights (file or timm hub id) loaded after construction")
    p.add_argument("--retrieval-k", type=retrieval_k_value, default=None, metavar="K|auto",
                   help="k of mclSTExp's retrieval (default: the dataset preset's, 200); auto: "
                   "k and the weighting chosen per fold by leave-one-training-section-out "
                   "validation (as `mclstexp train --retrieval-k auto`); baselines keep the "
                   "preset's k unless --baseline-k")
    p.add_argument("--baseline-k", type=int, default=None,
                   help="k of the top-k mean baseline (default: the method's k)")
    p.add_argument("--ridge-alpha", default="hest",
                   help="HEST probe penalty: 'hest' (100/(256*genes), HEST-Benchmark's), 'cv' "
                        "(chosen by CV over the training sections) or a number")
    p.add_argument("--bn-calibration", default=None,
                   help="where a frozen random encoder's BatchNorm statistics come from: 'all' "
                        "sections (default for cpu), each fold's 'train' sections, or 'none'")
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="run only these fold numbers (default: all)")
    p.add_argument("--methods", nargs="+", default=None, choices=list_methods(),
                   help="methods to compare (default: all registered in "
                        "mclstexp_hub.benchmark.methods)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every fold's checkpoint (default: only the first fold's)")
    p.add_argument("--expression-bank", default=None, metavar="DIR",
                   help="raw data folder of the dataset's reader (e.g. the her2st data/): its "
                        "sections with counts that are no benchmark section, minus each fold's "
                        "held-out patients, form the bank of the mclstexp_expression_bank "
                        "method (no images needed; default: that method is skipped)")
    add_run_options(p, overwrite="replace a finished RESULTS folder", seed=True)
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    _ACTIONS[:] = [a for a in p._actions if a.option_strings and a.dest != "help"]
