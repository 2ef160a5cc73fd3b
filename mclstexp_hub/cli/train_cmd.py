"""`mclstexp train`: train mclSTExp on a patch dataset and write a complete checkpoint."""

from __future__ import annotations

import argparse
import os

from ._options import (
    add_precision_option,
    add_batch_size_option,
    add_command,
    add_dataset_option,
    add_out_option,
    add_quiet_option,
    add_seed_option,
    retrieval_k_value,
)


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse explicit numbers that cannot be used (0 included), naming the option."""
    at_least_one = {"--epochs": args.epochs, "--batch-size": args.batch_size,
                    "--retrieval-k": None if args.retrieval_k == "auto" else args.retrieval_k,
                    "--max-position": args.max_position, "--micro-batch": args.micro_batch}
    for option, value in at_least_one.items():
        if value is not None and value < 1:
            raise ValueError(f"{option} must be a positive integer; got {value}.")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0; got {args.lr} (a zero learning rate trains nothing).")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0; got {args.weight_decay}.")
    if args.feature_views is not None and args.feature_views < 0:
        raise ValueError(f"--feature-views must be >= 0 (0: no cached views); got {args.feature_views}.")
    if args.encoder_input_size is not None and args.encoder_input_size < 32:
        raise ValueError(f"--encoder-input-size must be at least 32 px; got {args.encoder_input_size} "
                         "(leave it out to feed the patches as cut).")
    if args.image_encoder is not None and not args.image_encoder.strip():
        raise ValueError("--image-encoder is empty; give a timm model name or leave it out.")
    if args.pretrained_encoder is not None and not args.pretrained_encoder.strip():
        raise ValueError("--pretrained-encoder is empty; give a weights file or a timm Hub id.")


def _train(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.outputs import check_not_an_input
    from mclstexp_hub.training.profiles import DATASET_PRESETS
    from mclstexp_hub.training.trainer import resolve_profile, train_model

    _check_numbers(args)
    encoder_file = args.pretrained_encoder if args.pretrained_encoder and os.path.exists(
        args.pretrained_encoder) else None
    inputs = [args.dataset if os.path.exists(args.dataset) else None, encoder_file]
    check_not_an_input(args.out, inputs)  # before the slow work: --out may never hold an input
    meta = load_dataset_metadata(args.dataset)
    preset = args.preset or args.config or meta.get("config_name")
    if preset not in DATASET_PRESETS:
        raise ValueError(
            f"--preset: no preset for {preset!r}; pass --preset one of {sorted(DATASET_PRESETS)} "
            "(it sets the paper's retrieval k and epochs)."
        )
    sections = args.train_sections
    if sections is not None and not sections:
        raise ValueError("--train-sections: give at least one section.")
    dataset = load_st_dataset(args.dataset, config=args.config, sections=sections)
    overrides = {}
    if args.image_encoder is not None:  # an explicit value (even "") is used or refused
        overrides["image_encoder"] = args.image_encoder
    if args.max_position is not None:
        overrides["max_position"] = args.max_position
    if args.retrieval_k is not None and args.retrieval_k != "auto":
        overrides["retrieval_k"] = args.retrieval_k
    profile = resolve_profile(
        args.profile,
        preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        freeze_image_encoder=args.freeze_image_encoder,
        n_feature_views=args.feature_views,
        bf16=_bf16_from(args),
        grad_checkpointing=args.grad_checkpointing,
        micro_batch=args.micro_batch,
        encoder_input_size=args.encoder_input_size,
        seed=args.seed,
    )
    result = train_model(
        dataset,
        list(meta["gene_names"]),
        args.out,
        config_overrides=overrides,
        profile=profile,
        dataset_preset=preset,
        seed=args.seed,
        resume=args.resume,
        progress=not args.quiet,
        pretrained_encoder=args.pretrained_encoder,
        dataset_metadata=meta,
        keep_checkpoints=args.keep_checkpoints,
        inputs=inputs,
        select_retrieval=args.retrieval_k == "auto",
        retrieval_k_grid=args.retrieval_k_grid,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch, rank 0 reports
    losses = [h["loss"] for h in result.history if "loss" in h]
    summary = f"final loss {losses[-1]:.4f}, " if losses else ""
    print(
        f"trained on {result.train_spots} spots in {result.seconds:.0f} s ({summary}"
        f"profile {args.profile}); wrote {result.checkpoint_dir}"
    )
    return 0


def _bf16_from(args: argparse.Namespace) -> bool:
    """`--precision` (default auto) or the older `--bf16/--no-bf16` → the profile's bf16 flag."""
    from mclstexp_hub.models.mclstexp.precision_mclstexp import resolve_precision
    from mclstexp_hub.prediction.predict import resolve_device

    if args.bf16 is not None and args.precision is not None:
        if args.bf16 != (args.precision == "bf16"):
            raise ValueError(f"--bf16/--no-bf16 contradicts --precision {args.precision}; give one.")
    if args.bf16 is not None:
        return bool(args.bf16)
    device = resolve_device(getattr(args, "device", None))
    return resolve_precision(args.precision or "auto", device) == "bf16"


def register(subparsers: argparse._SubParsersAction) -> None:
    from mclstexp_hub.training.profiles import DATASET_PRESETS, PROFILE_NAMES

    p = add_command(
        subparsers, "train",
        "train mclSTExp on a patch dataset; writes weights + spot bank + image processor", """
        Profiles: 'paper' = the authors' recipe (end-to-end, 90 epochs on HER2+); 'cpu'
        = frozen image encoder with cached features of augmented views, spot tower +
        heads trained; 'cpu-e2e' = ResNet-18 at 64 px trained end to end with the spot
        tower; 'cpu-ft' = DenseNet-121 frozen through transition3 with its feature maps
        cached, denseblock4 + norm5 fine-tuned with the heads and spot tower (documented
        deviations; see docs/training.md). Options override the profile.""")
    add_dataset_option(p, "patch dataset folder or Hub dataset repo id")
    p.add_argument("--config", default=None, help="dataset config name (default: the dataset's)")
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(DATASET_PRESETS),
        help="paper settings for this dataset (retrieval k, epochs); default: --config",
    )
    p.add_argument("--train-sections", nargs="*", default=None, help="sections to train on (default: all)")
    add_out_option(p, "checkpoint folder to write")
    p.add_argument("--profile", choices=list(PROFILE_NAMES), default="paper")
    p.add_argument("--epochs", type=int, default=None)
    add_batch_size_option(p, None, "spots per batch = per attention sequence")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--image-encoder", default=None, help="timm model name (default densenet121)")
    p.add_argument("--encoder-input-size", type=int, default=None, metavar="PX",
                   help="resample patches to PX inside the model before the encoder (default: "
                        "the profile's; cpu-e2e 64, others as cut); a `mclstexp pretrain` tower "
                        "needs the size it was pretrained at")
    p.add_argument(
        "--pretrained-encoder",
        default=None,
        help="encoder weights loaded after construction: a state-dict file or a timm Hub id",
    )
    p.add_argument(
        "--freeze-image-encoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze the image encoder and train on its cached features (cpu profile default)",
    )
    p.add_argument(
        "--feature-views",
        type=int,
        default=None,
        help="augmented views cached per spot in frozen mode (0: run the encoder every step)",
    )
    add_precision_option(p, default=None)  # None: auto unless --bf16/--no-bf16 is given
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="same as --precision bf16 / fp32 (kept for old scripts)")
    p.add_argument(
        "--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
        help="recompute the image tower's activations in the backward pass (less memory, "
             "some recomputation). Default: auto, on where the tower trains from pixels on "
             "a CPU and off on CUDA or with a frozen/cached tower or --micro-batch "
             "(recorded in training_info.json)",
    )
    p.add_argument(
        "--micro-batch", type=int, default=None, metavar="N",
        help="run the image tower in slices of N patches while the contrastive loss still sees "
        "the whole batch (embedding gradients cached): tower memory of N patches, BatchNorm per "
        "slice; end-to-end profiles only (default: the whole batch)")
    p.add_argument("--max-position", type=int, default=None, help="rows per position table (default: from data)")
    p.add_argument(
        "--retrieval-k", type=retrieval_k_value, default=None, metavar="K|auto",
        help="neighbours averaged per prediction (default: the preset's); auto: choose k and "
        "the weighting (inverse_square/mean) by leave-one-training-section-out validation, "
        "recorded in training_info.json")
    p.add_argument("--retrieval-k-grid", type=int, nargs="+", default=None, metavar="K",
                   help="k values tried by --retrieval-k auto (10 25 50 100 200 400; capped at "
                   "the smallest validation bank)")
    add_seed_option(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints after success")
    add_quiet_option(p)
    p.set_defaults(func=_train)
