"""`mclstexp data build|push`: raw spatial data → Hub-ready patch dataset (and upload)."""

from __future__ import annotations

import argparse

from ._options import ListOption, add_command, add_out_option, add_run_options, add_subcommands, option_values


def _build(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.build import build_dataset

    out = build_dataset(
        args.kind,
        args.data_dir,
        args.out,
        **option_values(
            args,
            ("sections", "transform", "patch_size", "target_mpp", "source_mpp", "image",
             "overwrite", "license", "n_top", "min_spots", "allow_dropped_spots"),
            genes_file="genes", fill_missing="fill_missing_genes", dataset_name="name",
            flavor="hvg_flavor",
        ),
        progress=not args.quiet,
    )
    print(f"wrote {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from mclstexp_hub.data.hf_dataset import push_st_dataset

    info = push_st_dataset(args.dataset_dir, args.repo_id, private=args.private)
    print(f"pushed {args.dataset_dir} to {args.repo_id}: {info}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mclstexp_hub.data.transforms import DEFAULT_TRANSFORM, HVG_FLAVORS, TRANSFORMS

    sub = add_subcommands(add_command(subparsers, "data", "build and upload patch datasets"),
                          "data_command")
    from mclstexp_hub.data.readers import list_readers, reader_class

    layouts = "; ".join(  # from the reader registry: a new reader shows up here by itself
        f"{kind}: {reader_class(kind).layout}"
        + (" (+ --image)" if reader_class(kind).image_from_argument else "")
        for kind in list_readers()
    )
    build = add_command(
        sub, "build",
        "read raw sections, preprocess expression, cut patches, write parquet + card",
        f"--data-dir by kind: {layouts}.")
    build.add_argument("kind", choices=list_readers())
    build.add_argument("--data-dir", required=True, help="input folder (or .h5ad file)")
    add_out_option(build, "output dataset folder")
    build.add_argument("--sections", nargs="+", action=ListOption, default=None, help="sections to include")
    build.add_argument(
        "--genes", default=None, help="ordered gene panel (.txt one per line / .npy)"
    )
    build.add_argument(
        "--transform",
        choices=list(TRANSFORMS),
        default=DEFAULT_TRANSFORM,
        help="expression transform (default: the reference code's log10 1e4, paper's numbers)",
    )
    build.add_argument(
        "--fill-missing-genes",
        action="store_true",
        help="zero-fill panel genes absent from a section (reported) instead of failing",
    )
    build.add_argument("--patch-size", type=int, default=224)
    build.add_argument("--target-mpp", type=float, default=None, help="resample to µm/pixel")
    build.add_argument(
        "--source-mpp",
        type=float,
        default=None,
        help="µm/pixel of the full-resolution image(s), overriding the readers' estimate",
    )
    build.add_argument("--image", default=None, help="full-resolution image (visium/h5ad)")
    build.add_argument("--name", default=None, help="config/dataset name (default: the kind)")
    build.add_argument("--license", default=None, help="licence terms of the source data")
    build.add_argument("--n-top", type=int, default=1000, help="recipe: HVGs per section")
    build.add_argument("--min-spots", type=int, default=1000, help="recipe: min expressing spots")
    build.add_argument("--hvg-flavor", choices=list(HVG_FLAVORS), default="seurat")
    build.add_argument(
        "--allow-dropped-spots",
        action="store_true",
        help="build even when counts and spot positions join only partially (spots without "
        "counts, counts without spots); the drop is recorded per section in the metadata",
    )
    add_run_options(build, quiet="no progress bar")
    build.set_defaults(func=_build)

    push = add_command(sub, "push", "upload a built dataset folder to a Hub dataset repo")
    push.add_argument("dataset_dir")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_push)
