"""`mclstexp bank build|info`: (re)build a checkpoint's spot bank from reference data."""

from __future__ import annotations

import argparse
import os


def _build(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SPOT_BANK_FILENAME
    from mclstexp_hub.training.bank import build_bank_from_dataset

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
    if out != own_bank and os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
    model = MclSTExpModel.from_pretrained(args.checkpoint, load_spot_bank=False)
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
    )
    if model.config.retrieval_k > len(bank):
        print(
            f"warning: the bank has {len(bank)} spots, fewer than the model's retrieval_k="
            f"{model.config.retrieval_k}; predict with k <= {len(bank)}."
        )
    bank.save(out)
    print(f"wrote {out}: {len(bank)} spots from {', '.join(bank.metadata['sections'])}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    bank = SpotBank.load(args.path)
    print(f"{len(bank)} spots × {bank.n_genes} genes, embedding width {bank.embedding_dim}")
    print(json.dumps(bank.metadata, indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bank = subparsers.add_parser("bank", help="build or inspect spot banks")
    sub = bank.add_subparsers(dest="bank_command", metavar="SUBCOMMAND")
    sub.required = True

    build = sub.add_parser(
        "build",
        help="embed reference spots with a checkpoint's spot tower and save the bank",
        description=(
            "Every spot of --dataset (optionally --sections) goes through the spot tower in "
            "consecutive runs of --batch-size spots in dataset order (32, as the reference); a "
            "spot's embedding depends on its run, so the batching is recorded in the bank."
        ),
    )
    build.add_argument("checkpoint", help="checkpoint folder or Hub model id")
    build.add_argument("--dataset", required=True, help="patch dataset folder or Hub dataset id")
    build.add_argument("--config", default=None, help="dataset config name")
    build.add_argument("--sections", nargs="+", default=None, help="reference sections (default: all)")
    build.add_argument("--batch-size", type=int, default=32, help="spots per attention sequence (32)")
    build.add_argument(
        "--out", default=None, help="bank file or folder (default: CHECKPOINT/spot_bank.safetensors)"
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(func=_build)

    info = sub.add_parser("info", help="print a bank's size and how it was built")
    info.add_argument("path", help="spot_bank.safetensors or a checkpoint folder")
    info.set_defaults(func=_info)
