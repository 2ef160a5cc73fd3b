"""`mclstexp bank build|info`: (re)build a checkpoint's spot bank from reference data."""

from __future__ import annotations

import argparse
import os

from ._options import (
    add_batch_size_option,
    add_command,
    add_dataset_option,
    add_overwrite_option,
    add_quiet_option,
    add_sections_option,
    add_subcommands,
)


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
    sub = add_subcommands(add_command(subparsers, "bank", "build or inspect spot banks"), "bank_command")
    build = add_command(
        sub, "build",
        "embed reference spots with a checkpoint's spot tower and save the bank", """
        Every spot of --dataset (optionally --sections) goes through the spot tower in
        consecutive runs of --batch-size spots in dataset order (32, as the reference);
        a spot's embedding depends on its run, so the batching is recorded in the bank.""")
    build.add_argument("checkpoint", help="checkpoint folder or Hub model id")
    add_dataset_option(build)
    build.add_argument("--config", default=None, help="dataset config name")
    add_sections_option(build, "reference sections (default: all)")
    add_batch_size_option(build, 32, "spots per attention sequence (32)")
    build.add_argument(
        "--out", default=None, help="bank file or folder (default: CHECKPOINT/spot_bank.safetensors)"
    )
    add_overwrite_option(build, "replace an existing --out file")
    add_quiet_option(build, None)
    build.set_defaults(func=_build)

    info = add_command(sub, "info", "print a bank's size and how it was built")
    info.add_argument("path", help="spot_bank.safetensors or a checkpoint folder")
    info.set_defaults(func=_info)
