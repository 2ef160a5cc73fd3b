"""`mclstexp pretrain KIND`: self-supervised pretraining of the image tower on unlabelled tissue."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._options import (
    ListOption,
    add_command,
    add_precision_option,
    add_run_options,
)


def _pretrain(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.build import read_sections
    from mclstexp_hub.models.mclstexp.precision_mclstexp import resolve_precision
    from mclstexp_hub.outputs import OutputRefused, check_output, write_text_atomic
    from mclstexp_hub.training.ssl_pretrain import (
        SSLSettings,
        pretrain_tower,
        save_pretrained_tower,
    )

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out}: name the weights file *.safetensors (it is loaded "
                         "by `mclstexp train --pretrained-encoder`).")
    if out.is_dir():
        raise OutputRefused(f"--out {args.out} is a folder; give a file path ending .safetensors.")
    check_output(out, overwrite=args.overwrite, inputs=[args.data_dir, args.image],
                 is_ours=lambda p: p.is_file(), what="weights file")
    if args.record is not None:
        if Path(args.record).resolve() == out.resolve():
            raise ValueError("--record names the --out file; give the JSON record its own path.")
        check_output(args.record, overwrite=args.overwrite, inputs=[args.data_dir, args.image],
                     is_ours=lambda p: p.is_file(), what="record file", option="--record")
    settings = SSLSettings(
        image_encoder=args.image_encoder,
        encoder_input_size=None if args.encoder_input_size == 0 else args.encoder_input_size,
        window=args.window, pitch=args.pitch, min_tissue_fraction=args.min_tissue_fraction,
        margin=args.margin, max_tiles=args.max_tiles, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, temperature=args.temperature,
        **({} if args.jitter is None else {"jitter": args.jitter}),
        precision=resolve_precision(args.precision), seed=args.seed,
    )
    adatas = read_sections(args.kind, args.data_dir, args.sections, args.image)
    images, sections = [], []
    for a in adatas:
        images.append(next(iter(a.uns["spatial"].values()))["metadata"]["image_path"])
        sections.append(str(a.obs["section"].iloc[0]))
    state, record = pretrain_tower(images, settings, sections=sections, progress=not args.quiet)
    save_pretrained_tower(state, record, out)
    if args.record is not None:
        write_text_atomic(json.dumps(record, indent=2) + "\n", args.record)
    first, last = record["history"][0]["loss"], record["history"][-1]["loss"]
    print(f"wrote {out}: {settings.image_encoder} at {settings.view_size} px pretrained on "
          f"{record['tiles']} tissue tiles of {', '.join(sections)} for {settings.epochs} epochs "
          f"({record['steps']} steps, {record['train_seconds'] / 60:.1f} min); loss {first:.3f} → "
          f"{last:.3f} (chance {record['chance_loss']:.3f}). Use it with `mclstexp train "
          f"--pretrained-encoder {out} --encoder-input-size {settings.view_size}`.")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mclstexp_hub.data.readers import list_readers

    p = add_command(
        subparsers, "pretrain",
        "self-supervised pretraining of the image tower on the slides' unlabelled tissue",
        """Cuts a grid of spot-sized windows over each section's tissue (far more images than
        spots), trains a fresh image tower on them with a SimCLR-style objective (two random
        crops of a window must match among the batch) and writes its weights as one
        .safetensors file whose metadata holds the run record. `mclstexp train
        --pretrained-encoder FILE` then starts from it; training_info.json copies the record.
        Pretrain only on the sections you train on: tiles of held-out sections would leak
        them into an evaluation.""")
    p.add_argument("kind", choices=list_readers())
    p.add_argument("--data-dir", required=True, help="raw data folder, as for `mclstexp data build`")
    p.add_argument("--sections", nargs="+", action=ListOption, default=None,
                   help="sections whose images are used (default: every imaged section)")
    p.add_argument("--image", default=None, help="full-resolution image (visium/h5ad)")
    p.add_argument("--out", required=True, help="weights file to write (*.safetensors)")
    p.add_argument("--record", default=None, help="also write the run record as JSON here")
    p.add_argument("--image-encoder", default="densenet121", help="timm encoder (default densenet121)")
    p.add_argument("--encoder-input-size", type=int, default=112, metavar="PX",
                   help="side the encoder sees (default 112; 0 = the window itself); train "
                        "with the same --encoder-input-size")
    p.add_argument("--window", type=int, default=224,
                   help="tile side in full-resolution px (the dataset's patch size; default 224)")
    p.add_argument("--pitch", type=int, default=112, help="tile grid spacing in full-resolution px")
    p.add_argument("--min-tissue-fraction", type=float, default=0.5)
    p.add_argument("--margin", type=float, default=0.25,
                   help="context around each tile for the random crops (fraction of the window)")
    p.add_argument("--max-tiles", type=int, default=None, help="cap on the tile count (seeded subset)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64, help="tiles per step (two crops each)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=None,
                   help="colour-jitter strength (0 = none; default 0.5, the paper's augmentation)")
    add_precision_option(p)
    add_run_options(p, seed=True)
    p.set_defaults(func=_pretrain)
