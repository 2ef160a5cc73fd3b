"""`mclstexp demo`: the whole flow on embedded SYNTHETIC data, offline, in minutes on a CPU.

synthetic H&E-like slides (HER2+ layout) → `data build` → `train` (cpu profile: frozen small
encoder, cached features) → checkpoint with spot bank, image processor and pipeline code →
reload with `from_pretrained` → `mclstexp predict` on a held-out slide (spots CSV, observed
counts, gene maps) and on a tissue grid (`--tile`) → `mclstexp domains` → metrics next to a
shuffled-image control. The data is synthetic and says so everywhere; the commands to run the
same flow on the real HER2+ data are printed at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEMO_TRAIN_SECTIONS = ("A1", "B1", "C1")
DEMO_HELDOUT_SECTION = "D1"
DEMO_IMAGE_ENCODER = "resnet10t"
DEMO_RETRIEVAL_K = 10  # ~3 % of the ~330-spot bank (the paper: 200 of ~9,000 HER2+ spots)
DEMO_FEATURE_VIEWS = 2
DEMO_EPOCHS = 60  # the synthetic signal is learnt well before the cpu profile's 150 epochs
DEMO_PLOT_GENES = ("SYN_TUMOUR_01", "SYN_IMMUNE_01", "SYN_ADIPOSE_01", "SYN_HOUSEKEEPING_01")
N_SHUFFLES = 20
DEMO_MARKER = ".mclstexp_demo"

REAL_DATA_COMMANDS = """\
# The same flow on real HER2+ data (../shared/data/her2st, or data/ of a clone of
# github.com/almaan/her2st) — 224 px patches, the paper's 785-gene panel:
mclstexp data build her2st --data-dir ../shared/data/her2st --out her2st_ds \\
    --sections B4 C2 C3 C4 --genes ../shared/data/gene_lists/her2st_785.txt \\
    --allow-dropped-spots  # C3 lists 2 spots without a counts row (the authors drop them too)
mclstexp train --dataset her2st_ds --config her2st --train-sections C2 C3 C4 \\
    --profile cpu --out her2st_ckpt
mclstexp predict --model her2st_ckpt \\
    --image ../shared/data/her2st/ST-imgs/B/B4/BT10737_D2_HE.jpg \\
    --spots ../shared/data/her2st/ST-spotfiles/B4_selection.tsv \\
    --observed ../shared/data/her2st/ST-cnts/B4.tsv.gz --out b4_pred.h5ad --plot GNAS FASN
mclstexp domains b4_pred.h5ad --n-clusters 4
# (--tile instead of --spots predicts on a grid over the tissue; a spots CSV needs
#  pixel_x,pixel_y[,spot_id] in full-resolution pixels.)"""


@dataclass
class DemoResult:
    """Paths and figures of a demo run."""

    out_dir: Path
    checkpoint: Path
    prediction: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _say(message: str) -> None:
    print(message, flush=True)


def heldout_spots_csv(data, section: str, path: Path) -> Path:
    """The held-out section's in-tissue spots as a `mclstexp predict --spots` CSV."""
    table = pd.read_csv(data.spots_path(section), sep="\t")
    table = table[table["selected"] > 0]
    out = pd.DataFrame({
        "spot_id": table["x"].round().astype(int).astype(str) + "x"
        + table["y"].round().astype(int).astype(str),
        "pixel_x": table["pixel_x"],
        "pixel_y": table["pixel_y"],
    })
    out.to_csv(path, index=False)
    return path


def shuffled_control(predicted: np.ndarray, observed: np.ndarray, n: int = N_SHUFFLES,
                     seed: int = 0) -> dict[str, float]:
    """PCC(ACG) when each spot gets the prediction of a random other spot's image.

    Each spot's prediction depends only on its own patch, so permuting prediction rows is
    exactly predicting from shuffled images.
    """
    from mclstexp_hub.evaluation.metrics import pearson_per_gene

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        r, _ = pearson_per_gene(predicted[rng.permutation(len(predicted))], observed)
        values.append(float(np.nanmean(r)))
    return {"pcc_acg_mean": float(np.mean(values)), "pcc_acg_sd": float(np.std(values)),
            "n_permutations": n}


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    feature_views: int = DEMO_FEATURE_VIEWS,
    epochs: int = DEMO_EPOCHS,
    image_encoder: str = DEMO_IMAGE_ENCODER,
    grid: tuple[int, int] = (12, 12),
) -> DemoResult:
    """Run the synthetic end-to-end demo into `out_dir`; returns paths and metrics."""
    import torch

    from mclstexp_hub.cli import main as cli_main
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.evaluation.metrics import evaluate_section
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.prediction.predict import ensure_registered
    from mclstexp_hub.synthetic import SYNTHETIC_NOTE, generate_synthetic_dataset
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.trainer import train_model

    ensure_registered()  # checkpoints then carry the processor's auto_map and code
    out = Path(out_dir)
    if out.exists():
        # A folder an earlier demo wrote is replaced (so `make demo` can be re-run); anything
        # else is only replaced with --overwrite.
        ours = (out / DEMO_MARKER).is_file()
        if not (overwrite or ours) and any(out.iterdir()):
            raise FileExistsError(
                f"{out} already exists, is not empty and was not written by `mclstexp demo`; "
                "choose another --out or pass --overwrite."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by `mclstexp demo`; safe to delete\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    _say("=" * 78)
    _say("mclstexp demo — " + SYNTHETIC_NOTE)
    _say("=" * 78)

    t0 = time.perf_counter()
    sections = (*DEMO_TRAIN_SECTIONS, DEMO_HELDOUT_SECTION)
    data = generate_synthetic_dataset(out / "synthetic", sections=sections, seed=seed,
                                      n_rows=grid[0], n_cols=grid[1], progress=progress)
    timings["synthetic_data_s"] = time.perf_counter() - t0
    _say(f"[1/7] synthetic slides: {data.n_spots} spots under tissue, {len(data.gene_names)} "
         f"genes, {data.spot_diameter} px spots -> {data.data_dir}")

    t0 = time.perf_counter()
    dataset_dir = build_dataset(
        "her2st", data.data_dir, out / "dataset", sections=list(sections),
        genes_file=data.genes_file, patch_size=data.spot_diameter, dataset_name="synthetic",
        license="synthetic data, no licence restrictions", progress=progress,
    )
    timings["dataset_build_s"] = time.perf_counter() - t0
    _say(f"[2/7] patch dataset (HER2+ reader, log10 CP10k-panel transform) -> {dataset_dir}")

    t0 = time.perf_counter()
    meta = load_dataset_metadata(dataset_dir)
    train_ds = load_st_dataset(dataset_dir, sections=list(DEMO_TRAIN_SECTIONS))
    profile = get_profile("cpu", "her2st").replace(n_feature_views=feature_views, epochs=epochs,
                                                   seed=seed)
    ckpt = out / "checkpoint"
    result = train_model(
        train_ds, meta["gene_names"], str(ckpt), profile=profile, seed=seed,
        config_overrides={"image_encoder": image_encoder, "retrieval_k": DEMO_RETRIEVAL_K},
        dataset_metadata=meta, progress=progress,
    )  # a complete checkpoint (hub.checkpoint.write_checkpoint): bank, processor, pipeline code
    timings["train_s"] = time.perf_counter() - t0
    losses = [h["loss"] for h in result.history if "loss" in h]
    _say(f"[3/7] trained ({profile.name} profile: frozen {image_encoder}, {feature_views} "
         f"augmented views + clean cached, {profile.epochs} epochs) on {result.train_spots} spots "
         f"of {list(DEMO_TRAIN_SECTIONS)}; loss {losses[0]:.3f} -> {losses[-1]:.3f} -> {ckpt}")

    reloaded = MclSTExpModel.from_pretrained(ckpt)
    if reloaded.spot_bank is None:
        raise RuntimeError(f"{ckpt}: the reloaded model has no spot bank.")
    _say(f"[4/7] reloaded with MclSTExpModel.from_pretrained: spot bank of "
         f"{len(reloaded.spot_bank)} spots, k={reloaded.config.retrieval_k}, "
         f"patch {reloaded.config.patch_size} px, pixel_scaling={reloaded.config.pixel_scaling}")
    del reloaded

    t0 = time.perf_counter()
    spots_csv = heldout_spots_csv(data, DEMO_HELDOUT_SECTION, out / "heldout_spots.csv")
    pred_path = out / "pred.h5ad"
    argv = ["predict", "--model", str(ckpt), "--image", str(data.image_path(DEMO_HELDOUT_SECTION)),
            "--spots", str(spots_csv), "--observed", str(data.counts_path(DEMO_HELDOUT_SECTION)),
            "--out", str(pred_path), "--plot", *DEMO_PLOT_GENES, "--plot-dir",
            str(out / "gene_maps"), "--device", "cpu", "--batch-size", "32"]
    if not progress:
        argv.append("--quiet")
    _say("[5/7] $ mclstexp " + " ".join(argv))
    if cli_main(argv) != 0:
        raise RuntimeError("mclstexp predict failed (see the message above).")
    tile_argv = ["predict", "--model", str(ckpt), "--image",
                 str(data.image_path(DEMO_HELDOUT_SECTION)), "--tile", "--out",
                 str(out / "pred_tiles.h5ad"), "--plot", DEMO_PLOT_GENES[0], "--plot-dir",
                 str(out / "gene_maps_tiles"), "--device", "cpu", "--quiet"]
    _say("      $ mclstexp " + " ".join(tile_argv))
    if cli_main(tile_argv) != 0:
        raise RuntimeError("mclstexp predict --tile failed (see the message above).")
    timings["predict_s"] = time.perf_counter() - t0

    import anndata as ad

    pred = ad.read_h5ad(pred_path)
    observed = np.asarray(pred.layers["observed"], dtype=np.float64)
    keep = np.isfinite(observed).all(axis=1)
    predicted = np.asarray(pred.X, dtype=np.float64)[keep]
    observed = observed[keep]
    scores = evaluate_section(predicted, observed, list(pred.var_names),
                              section=DEMO_HELDOUT_SECTION, n_top=10)
    control = shuffled_control(predicted, observed, seed=seed)
    per_gene = scores.per_gene.set_index("gene")["pearson_r"]
    _say(f"[6/7] held-out {DEMO_HELDOUT_SECTION} ({scores.n_spots} spots): PCC(ACG) = "
         f"{scores.pcc_acg:.3f}, PCC(HEG, top 10) = {scores.pcc_heg:.3f}; shuffled-image control "
         f"PCC(ACG) = {control['pcc_acg_mean']:.3f} ± {control['pcc_acg_sd']:.3f}")

    labels = data.labels_path(DEMO_HELDOUT_SECTION)
    domain_argv = ["domains", str(pred_path), "--n-clusters", "4", "--labels", str(labels),
                   "--out-dir", str(out / "domains")]
    _say("[7/7] $ mclstexp " + " ".join(domain_argv))
    if cli_main(domain_argv) != 0:
        raise RuntimeError("mclstexp domains failed (see the message above).")
    domains = json.loads((out / "domains" / "pred_domains.json").read_text())

    timings["total_s"] = time.perf_counter() - started
    metrics = {
        "note": SYNTHETIC_NOTE,
        "heldout_section": DEMO_HELDOUT_SECTION,
        "train_sections": list(DEMO_TRAIN_SECTIONS),
        "n_heldout_spots": scores.n_spots,
        "n_genes": scores.n_genes,
        "pcc_acg": scores.pcc_acg,
        "pcc_heg_top10": scores.pcc_heg,
        "mse": scores.mse,
        "mae": scores.mae,
        "units": str(pred.uns["mclstexp"]["units"]),
        "shuffled_image_control": control,
        "per_gene_pearson_r": {g: float(v) for g, v in per_gene.items()},
        "domains": domains.get("scores"),
        "train": {"profile": profile.name, "image_encoder": image_encoder,
                  "feature_views": feature_views, "epochs": profile.epochs,
                  "learning_rate": profile.learning_rate, "retrieval_k": DEMO_RETRIEVAL_K,
                  "train_spots": result.train_spots, "first_loss": losses[0],
                  "last_loss": losses[-1]},
        "timings_s": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _say("-" * 78)
    _say(f"SYNTHETIC data, held-out slide {DEMO_HELDOUT_SECTION}: model PCC(ACG) "
         f"{scores.pcc_acg:.3f} vs shuffled-image control {control['pcc_acg_mean']:.3f}; "
         f"domains ARI {domains['scores']['ari']:.3f}, NMI {domains['scores']['nmi']:.3f}; "
         f"total {timings['total_s']:.0f} s")
    _say(f"outputs: {pred_path}, {out / 'gene_maps'}, {out / 'domains'}, {out / 'metrics.json'}")
    _say(REAL_DATA_COMMANDS)
    return DemoResult(out_dir=out, checkpoint=ckpt, prediction=pred_path, metrics=metrics)


__all__ = ["REAL_DATA_COMMANDS", "DemoResult", "heldout_spots_csv", "run_demo", "shuffled_control"]
