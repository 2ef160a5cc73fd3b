"""`mclstexp zoo build PRESET`: raw data → dataset → model → benchmark → bank → card → push.

One resumable command per dataset preset (mclstexp_hub.zoo.recipes): each step is skipped
when its JSON stamp in OUT/zoo_stamps says its output is current, and an interrupted run
resumes at its first incomplete step.
"""

from __future__ import annotations

import argparse
import shlex

from mclstexp_hub.presets import preset_names

from ._options import ListOption, add_batch_size_option, add_command, add_subcommands

STEPS = ("data", "train", "benchmark", "bank", "card", "push")  # = zoo.recipes.STEP_NAMES


def _build(args: argparse.Namespace) -> int:
    from mclstexp_hub.zoo.recipes import ZooOptions, build_zoo_model

    for option, value in {"--epochs": args.epochs, "--batch-size": args.batch_size,
                          "--retrieval-k": args.retrieval_k, "--patch-size": args.patch_size,
                          "--bank-batch-size": args.bank_batch_size}.items():
        if value is not None and value < 1:
            raise ValueError(f"{option} must be a positive integer; got {value}.")
    if args.push is not None and args.push.count("/") != 1:
        raise ValueError(f"--push {args.push!r}: give the model repository as ORG/NAME.")
    opts = ZooOptions(
        preset=args.preset, data_dir=args.data_dir, out=args.out, kind=args.kind,
        sections=args.sections, genes=args.genes, patch_size=args.patch_size,
        data_license=args.data_license, allow_dropped_spots=args.allow_dropped_spots,
        profile=args.profile, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, n_feature_views=args.feature_views,
        image_encoder=args.image_encoder, retrieval_k=args.retrieval_k, seed=args.seed,
        methods=args.methods, bank_batch_size=args.bank_batch_size, index=args.index,
        card_license=args.license, push=args.push, revision=args.revision,
        private=args.private, token=args.token, rerun=args.rerun, progress=not args.quiet,
        command=shlex.join(["mclstexp", "zoo", "build", args.preset, "--data-dir",
                            args.data_dir, "--out", args.out]
                           + (["--kind", args.kind] if args.kind else [])
                           + ["--profile", args.profile]) + " (benchmark step)",
    )
    if args.quiet:  # the step lines stay; the libraries' own bars go
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        disable_progress_bars()
        hf_logging.disable_progress_bar()
    build_zoo_model(opts, say=lambda line: print(line, flush=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    zoo = add_command(subparsers, "zoo", "build the model zoo: one resumable recipe per dataset")
    sub = add_subcommands(zoo, "zoo_command")
    p = add_command(
        sub, "build",
        "data build → train → benchmark (patient split) → bank → card → push, resumable", """
        Runs the whole chain for a dataset preset into OUT. Each step writes atomically and
        records a JSON stamp in OUT/zoo_stamps (its options + the fingerprints of the
        outputs it reads); a step whose stamp is current is skipped, the first one that
        differs runs again with every step after it, and an interrupted run resumes at its
        first incomplete step. The card reports the benchmark's measured figures only.""")
    p.add_argument("preset", choices=preset_names(), help="dataset preset (paper settings)")
    p.add_argument("--data-dir", required=True, help="raw data folder of the reader kind")
    p.add_argument("--out", required=True, help="build folder (created; reused to resume)")
    p.add_argument("--kind", default=None,
                   help="reader kind overriding the preset's (any of `mclstexp data build`'s "
                        "kinds, e.g. hest with HEST sample ids as --sections)")
    p.add_argument("--sections", nargs="+", action=ListOption, default=None,
                   help="sections (or HEST ids) to build (default: all of DATA_DIR)")
    p.add_argument("--genes", default=None,
                   help="gene panel file (default: the preset's panel file in DATA_DIR or "
                        "DATA_DIR/../gene_lists, else the build's highly variable genes)")
    p.add_argument("--patch-size", type=int, default=224, help="patch side in pixels (224)")
    p.add_argument("--data-license", default=None,
                   help="licence of the source data (default: the preset's note)")
    p.add_argument("--allow-dropped-spots", action=argparse.BooleanOptionalAction, default=True,
                   help="build when counts and spots join only partially, as the reference "
                        "and the benchmark do (default: on)")
    p.add_argument("--profile", choices=["cpu", "paper"], default="cpu",
                   help="training profile for the model and the benchmark folds (cpu)")
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    add_batch_size_option(p, None, "override the profile's batch")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--feature-views", type=int, default=None,
                   help="augmented cached views per spot (frozen-encoder profiles)")
    p.add_argument("--image-encoder", default=None,
                   help="timm encoder (config override; default densenet121)")
    p.add_argument("--retrieval-k", type=int, default=None,
                   help="retrieval k (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=None,
                   help="benchmark methods (default: all registered; mclstexp is required)")
    p.add_argument("--bank-batch-size", type=int, default=32,
                   help="spots per attention sequence when embedding the bank (32)")
    p.add_argument("--index", choices=["auto", "exact", "ivf"], default="auto",
                   help="neighbour search saved with the bank (see `mclstexp bank build`)")
    p.add_argument("--license", default="mit", help="licence of the model card (mit)")
    p.add_argument("--push", default=None, metavar="ORG/NAME",
                   help="publish the model and its card to this Hub repository (HF_ENDPOINT)")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / login)")
    p.add_argument("--rerun", choices=STEPS, default=None,
                   help="run this step and every later one even when current")
    p.add_argument("--quiet", action="store_true", help="no progress bars (step lines stay)")
    p.set_defaults(func=_build)
