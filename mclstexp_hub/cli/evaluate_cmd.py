"""`mclstexp evaluate`: score a checkpoint's predictions on held-out sections of a dataset."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint
    from mclstexp_hub.evaluation.metrics import average_metrics

    results, paths = evaluate_checkpoint(
        args.model, args.dataset, args.sections, args.out, k=args.k, distance=args.distance,
        weighting=args.weighting, batch_size=args.batch_size,
        allow_bank_overlap=args.allow_bank_overlap, n_map_genes=args.n_map_genes,
        progress=not args.quiet,
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
    p = subparsers.add_parser(
        "evaluate",
        help="predict held-out sections with a checkpoint and write metrics (JSON/CSV/PNG)",
        description=(
            "Embeds every patch of the chosen sections with the checkpoint's image tower, "
            "predicts expression by retrieval from its spot bank, and writes per-gene Pearson "
            "r, PCC(ACG/HEG/HVG), MSE and MAE per section and averaged, with figures."
        ),
    )
    p.add_argument("--model", required=True, help="checkpoint folder (with spot_bank.safetensors)")
    p.add_argument("--dataset", required=True, help="patch dataset folder or Hub dataset id")
    p.add_argument("--sections", nargs="+", default=None,
                   help="held-out sections to score (default: all sections of the dataset)")
    p.add_argument("--out", required=True, help="output folder for metrics and figures")
    p.add_argument("--k", type=int, default=None, help="retrieval k (default: the model's)")
    p.add_argument("--distance", choices=["l1", "l2", "cosine"], default=None)
    p.add_argument("--weighting", choices=["inverse_square", "mean", "softmax"], default=None)
    p.add_argument("--batch-size", type=int, default=64, help="patches per image-tower batch")
    p.add_argument("--n-map-genes", type=int, default=4, help="best genes drawn per section map")
    p.add_argument("--allow-bank-overlap", action="store_true",
                   help="score sections that are in the model's bank (not a held-out estimate)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
