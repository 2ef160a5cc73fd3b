"""`mclstexp bank build|info`: (re)build a checkpoint's spot bank from reference data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._options import (
    add_batch_size_option,
    add_command,
    add_overwrite_option,
    add_precision_option,
    add_quiet_option,
    add_sections_option,
    add_subcommands,
)


def _build(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SPOT_BANK_FILENAME
    from mclstexp_hub.outputs import (
        OutputRefused,
        check_not_an_input,
        check_output,
        is_checkpoint_folder,
        is_spot_bank_file,
    )
    from mclstexp_hub.training.bank import build_bank_from_dataset

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer; got {args.batch_size}.")
    own_bank = os.path.join(args.checkpoint, SPOT_BANK_FILENAME)
    out = args.out
    if out is None:
        if not os.path.isdir(args.checkpoint):
            raise ValueError(
                f"{args.checkpoint} is not a local folder; pass --out PATH for the new bank."
            )
        out = own_bank  # rebuilding a checkpoint's own bank replaces it
    elif os.path.isdir(out):
        out = os.path.join(out, SPOT_BANK_FILENAME)
    if (args.dataset is None) == (args.expression is None):
        raise ValueError("pass exactly one of --dataset DIR or --expression SOURCE --kind KIND.")
    if args.expression is not None and args.kind is None:
        raise ValueError("--expression needs --kind (her2st, cscc, visium, h5ad, ...): the "
                         "reader of its layout.")
    source_arg = args.dataset if args.dataset is not None else args.expression
    dataset_dir = os.path.abspath(source_arg) if os.path.exists(source_arg) else None
    if dataset_dir and os.path.abspath(out).startswith(dataset_dir + os.sep):
        raise OutputRefused(
            f"--out {args.out} lies inside the input "
            f"{'dataset' if args.dataset is not None else 'data'} {source_arg}; write the bank "
            "elsewhere (e.g. CHECKPOINT/spot_bank.safetensors)."
        )
    checkpoint_files = [os.path.join(args.checkpoint, name) for name in
                        ("config.json", "model.safetensors")] if os.path.isdir(args.checkpoint) else []
    inputs = [dataset_dir, *checkpoint_files]
    if os.path.abspath(out) == os.path.abspath(own_bank) and is_checkpoint_folder(
            Path(args.checkpoint)):
        check_not_an_input(out, inputs)  # a checkpoint's own bank is rebuilt in place
    else:
        check_output(out, overwrite=args.overwrite, inputs=inputs, is_ours=is_spot_bank_file,
                     what="spot bank file")
    model = MclSTExpModel.from_pretrained(args.checkpoint, load_spot_bank=False)
    if args.expression is not None:
        from mclstexp_hub.training.bank import build_bank_from_expression

        bank = build_bank_from_expression(
            model, args.kind, args.expression, sections=args.sections,
            batch_size=args.batch_size, progress=not args.quiet,
            exclude_sections=args.exclude_sections or (),
            exclude_patients=args.exclude_patients or (), attach=True,
            precision=args.precision,
        )
    else:
        meta = load_dataset_metadata(args.dataset)
        dataset = load_st_dataset(args.dataset, config=args.config, sections=args.sections)
        bank = build_bank_from_dataset(
            model,
            dataset,
            batch_size=args.batch_size,
            progress=not args.quiet,
            dataset_metadata=meta,
            source=str(args.dataset),
            attach=True,
            precision=args.precision,
        )
    if model.config.retrieval_k > len(bank):
        print(
            f"warning: the bank has {len(bank)} spots, fewer than the model's retrieval_k="
            f"{model.config.retrieval_k}; predict with k <= {len(bank)}."
        )
    bank.save(out)
    print(f"wrote {out}: {len(bank)} spots from {', '.join(bank.metadata['sections'])} "
          f"(spot tower {bank.metadata['precision']})")
    _build_index(args, bank, model, os.path.dirname(os.path.abspath(out)))
    return 0


def _build_index(args: argparse.Namespace, bank, model, folder: str) -> None:
    """--index auto|exact|ivf: build (or remove) the FAISS index saved next to the bank."""
    from mclstexp_hub.retrieval.auto import EXACT_MAX_SPOTS, build_searcher, save_searcher

    k = min(int(model.config.retrieval_k), len(bank))
    try:
        searcher, report = build_searcher(bank, k, kind=args.index,
                                          target_recall=args.target_recall)
    except ImportError as exc:  # faiss is optional: auto falls back to exact search
        if args.index != "auto":
            raise
        print(f"warning: no FAISS index built ({exc}); predictions will search exactly.")
        searcher, report = None, {"kind": "exact", "reason": "faiss not installed"}
    written = save_searcher(folder, searcher, report)  # exact: removes a stale index
    if searcher is None:
        print(f"search: exact ({report['reason']}; index threshold {EXACT_MAX_SPOTS} spots)")
        return
    print(f"search: FAISS IVF index, nlist {report['nlist']}, nprobe {report['nprobe']}: "
          f"measured recall@{k} {report['recall_at_k']:.4f} on {report['n_probes']} perturbed "
          f"bank rows (target {report['target_recall']}), built in {report['build_s']:.1f} s")
    print(f"wrote {', '.join(written)}")


def _info(args: argparse.Namespace) -> int:
    import json

    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    bank = SpotBank.load(args.path)
    print(f"{len(bank)} spots × {bank.n_genes} genes, embedding width {bank.embedding_dim}")
    print(json.dumps(bank.metadata, indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_subcommands(add_command(subparsers, "bank", "build or inspect spot banks"), "bank_command")
    build = add_command(
        sub, "build",
        "embed reference spots with a checkpoint's spot tower and save the bank", """
        Every spot of --dataset (optionally --sections) goes through the spot tower in
        consecutive runs of --batch-size spots in dataset order (32, as the reference);
        a spot's embedding depends on its run, so the batching is recorded in the bank.
        --expression SOURCE --kind KIND builds it from counts + spot positions alone (no
        images), preprocessed with the checkpoint's gene panel and expression transform.""")
    build.add_argument("checkpoint", help="checkpoint folder or Hub model id")
    build.add_argument("--dataset", default=None, help="patch dataset folder or Hub dataset id")
    build.add_argument(
        "--expression", default=None, metavar="SOURCE",
        help="raw counts + spot positions instead of a patch dataset (no images needed): the "
        "reader's input (folder or .h5ad); preprocessed with the checkpoint's gene panel and "
        "expression transform")
    build.add_argument("--kind", default=None, help="reader for --expression (her2st, cscc, "
                       "visium, h5ad, ...)")
    build.add_argument("--exclude-sections", nargs="+", default=None, metavar="SECTION",
                       help="with --expression: sections left out of the bank")
    build.add_argument("--exclude-patients", nargs="+", default=None, metavar="PATIENT",
                       help="with --expression: patients left out of the bank (e.g. the "
                       "held-out section's patient)")
    build.add_argument("--config", default=None, help="dataset config name")
    add_sections_option(build, "reference sections (default: all)")
    add_batch_size_option(build, 32, "spots per attention sequence (32)")
    build.add_argument(
        "--out", default=None, help="bank file or folder (default: CHECKPOINT/spot_bank.safetensors)"
    )
    add_overwrite_option(build, "replace an existing --out file")
    build.add_argument(
        "--index", choices=["auto", "exact", "ivf"], default="auto",
        help="neighbour search for predictions: auto (exact up to "
        "mclstexp_hub.retrieval.auto.EXACT_MAX_SPOTS spots, else a FAISS IVF index tuned on "
        "the bank to --target-recall, saved as spot_bank.faiss + spot_bank_index.json), "
        "exact, or ivf (always build the index)")
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="recall@k the IVF index must reach on the bank (0.95)")
    add_precision_option(build)
    add_quiet_option(build, None)
    build.set_defaults(func=_build)

    info = add_command(sub, "info", "print a bank's size and how it was built")
    info.add_argument("path", help="spot_bank.safetensors or a checkpoint folder")
    info.set_defaults(func=_info)
