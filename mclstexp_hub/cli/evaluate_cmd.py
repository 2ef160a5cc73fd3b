"""`mclstexp evaluate`: score a checkpoint's predictions on held-out sections of a dataset."""

from __future__ import annotations

import argparse

from ._options import (
    add_backend_option,
    add_precision_option,
    add_batch_size_option,
    add_command,
    add_dataset_option,
    add_k_option,
    add_model_option,
    add_out_option,
    add_overwrite_option,
    add_quiet_option,
    add_sections_option,
    option_values,
)


def _run(args: argparse.Namespace) -> int:
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint
    from mclstexp_hub.evaluation.metrics import average_metrics

    results, paths = evaluate_checkpoint(
        args.model, args.dataset, args.sections, args.out,
        **option_values(args, ("k", "distance", "weighting", "batch_size", "allow_bank_overlap",
                               "n_map_genes", "precision", "backend")),
        progress=not args.quiet, overwrite=args.overwrite,
    )
    print(f"{'section':<10} {'spots':>6} {'PCC(ACG)':>9} {'PCC(HEG)':>9} {'PCC(HVG)':>9} "
          f"{'MSE':>8} {'MAE':>8} {'NaN genes':>9}")
    for r in results:
        print(f"{r.section:<10} {r.n_spots:>6} {r.pcc_acg:>9.4f} {r.pcc_heg:>9.4f} "
              f"{r.pcc_hvg:>9.4f} {r.mse:>8.4f} {r.mae:>8.4f} {r.n_nan_genes:>9}")
    mean = average_metrics(results)
    print(f"{'mean':<10} {'':>6} {mean['pcc_acg']:>9.4f} {mean['pcc_heg']:>9.4f} "
          f"{mean['pcc_hvg']:>9.4f} {mean['mse']:>8.4f} {mean['mae']:>8.4f} "
          f"{mean['n_nan_genes']:>9}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "evaluate",
        "predict held-out sections with a checkpoint and write metrics (JSON/CSV/PNG)", """
        Embeds every patch of the chosen sections with the checkpoint's image tower,
        predicts expression by retrieval from its spot bank, and writes per-gene Pearson
        r, PCC(ACG/HEG/HVG), MSE and MAE per section and averaged, with figures.""")
    add_model_option(p, "checkpoint folder (with spot_bank.safetensors)")
    add_dataset_option(p)
    add_sections_option(p, "held-out sections to score (default: all sections of the dataset)")
    add_out_option(p, "output folder for metrics and figures")
    add_k_option(p)
    p.add_argument("--distance", choices=["l1", "l2", "cosine"], default=None)
    p.add_argument("--weighting", choices=["inverse_square", "mean", "softmax"], default=None)
    add_batch_size_option(p, 64, "patches per image-tower batch")
    p.add_argument("--n-map-genes", type=int, default=4, help="best genes drawn per section map")
    add_precision_option(p)
    add_backend_option(p)
    p.add_argument("--allow-bank-overlap", action="store_true",
                   help="score sections that are in the model's bank (not a held-out estimate)")
    add_overwrite_option(p, "replace an existing --out written by `mclstexp evaluate`")
    add_quiet_option(p)
    p.set_defaults(func=_run)
