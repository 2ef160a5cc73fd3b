"""`mclstexp predict`: a checkpoint + an H&E slide → pred.h5ad or pred.zarr (+ gene-map PNGs)."""

from __future__ import annotations

import argparse

from ._options import (
    add_backend_option,
    add_precision_option,
    ListOption,
    add_batch_size_option,
    add_command,
    add_device_option,
    add_k_option,
    add_model_option,
    add_out_option,
    add_run_options,
    option_values,
)


def _predict(args: argparse.Namespace) -> int:
    from mclstexp_hub.prediction.predict import predict_to_h5ad

    result = predict_to_h5ad(
        args.model,
        args.image,
        args.out,
        spots_csv=args.spots,
        plot_genes=args.plot or (),
        **option_values(args, ("visium", "tile", "plot_dir", "observed", "batch_size", "device",
                               "revision", "k", "library_id", "tile_pitch",
                               "min_tissue_fraction", "overwrite", "precision", "backend")),
        progress=not args.quiet,
    )
    adata = result.adata
    info = adata.uns["mclstexp"]
    print(
        f"wrote {result.path}: {adata.n_obs} spots × {adata.n_vars} genes "
        f"(units: {info['units']}; k={info['retrieval_k']}, bank of {info['spot_bank_n_spots']} "
        "spots)"
    )
    if result.observed_mean_r is not None:
        print(f"observed expression from {args.observed or args.visium}: mean per-gene Pearson r "
              f"= {result.observed_mean_r:.3f} over {info['observed_n_spots_matched']} spots")
    for path in result.plots:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "predict", "predict spatial gene expression of a slide into an "
                    "AnnData (.h5ad)", """
        Predict expression at spot positions of an H&E slide with an mclSTExp checkpoint
        (directory or Hub id) and write scanpy-ready AnnData: var_names = genes, X =
        prediction in the checkpoint's units, obsm['spatial'] in full-resolution pixels,
        uns['spatial'][library] with a thumbnail and scale factors, uns['mclstexp'] = units
        and provenance. Spots come from --spots CSV (pixel_x, pixel_y[, spot_id]),
        --visium OUTS_DIR (Space Ranger) or --tile (grid over the tissue). An --out ending in
        .zarr writes a SpatialData store instead (thumbnail image, spot circles, prediction
        table; needs the spatialdata extra).""")
    add_model_option(p)
    p.add_argument("--image", required=True, help="full-resolution H&E image (JPEG/PNG/TIFF/SVS)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--spots", help="CSV/TSV with pixel_x, pixel_y (full-res centres), spot_id")
    where.add_argument("--visium", help="Space Ranger outs/ folder (positions + scale factors)")
    where.add_argument("--tile", action="store_true",
                       help="no spot table: a regular grid over the tissue at spot pitch")
    add_out_option(p, "output .h5ad (AnnData), or .zarr (SpatialData store: image, spot "
                      "circles, table; pip install 'mclstexp-hub[spatialdata]'); written "
                      "atomically")
    p.add_argument("--plot", nargs="+", action=ListOption, metavar="GENE", help="write a PNG map for these genes")
    p.add_argument("--plot-dir", help="folder for the PNGs (default: OUT_STEM_maps/ next to --out)")
    p.add_argument("--observed", help="raw counts of the same spots (.h5ad, ST-cnts .tsv.gz, "
                                      "Space Ranger outs/): adds layers['observed'] and Pearson r")
    add_batch_size_option(p, 32, "patches per forward pass (32)")
    add_device_option(p)
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    add_k_option(p, "neighbours retrieved (default: config)")
    p.add_argument("--library-id", help="key under uns['spatial'] (default: image file stem)")
    p.add_argument("--tile-pitch", type=float, default=None,
                   help="--tile grid pitch in full-res pixels (default: the model's patch size)")
    p.add_argument("--min-tissue-fraction", type=float, default=0.5,
                   help="--tile: keep grid points with at least this tissue under the patch")
    add_precision_option(p)
    add_backend_option(p, "uns['mclstexp']")
    add_run_options(p, quiet="no progress bar")
    p.set_defaults(func=_predict)
