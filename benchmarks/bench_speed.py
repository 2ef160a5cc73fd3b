"""Speed and memory of training and prediction on real HER2+ data (prints figures; not a test).

    .venv/bin/python benchmarks/bench_speed.py [--steps 2] [--only train_fp32,...] [--compile]

Each configuration runs in its own subprocess, so its peak RSS (`resource.getrusage`) is its
own. Training figures time real `transformers.Trainer` steps of `train_model` (forward,
backward, AdamW; the Trainer fetches the batch — collation + per-patch augmentation, about
7.5 ms a patch — before a step begins, so that part is not in the figure) at batch 128,
224 px, on HER2+ patches of C2/C3/C4, after one warm-up step. Prediction times a whole section (B4) end to end: decode the slide
once, cut patches, image tower, retrieval from a bank of the training spots.

The authors' figures on this machine are quoted, not measured here: training 3.2–3.4 spots/s
at a peak of 21.2 GiB RSS, prediction 11.8 spots/s, checkpoint 465 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MCLSTEXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
QUOTED = {"train_spots_s": 3.3, "train_peak_gib": 21.2, "predict_spots_s": 11.8, "ckpt_mb": 465}
TRAIN_SECTIONS = ["C2", "C3", "C4"]
TEST_SECTION = "B4"

# name -> (description, settings)
TRAIN_CONFIGS = {
    "train_fp32": ("full model, fp32 eager, NCHW, 65,536-row position tables (reference-like)",
                   {"bf16": False, "channels_last": False, "grad_checkpointing": False, "paper_tables": True}),
    "train_fp32_cl": ("full model, fp32, channels-last, tables sized from the data",
                      {"bf16": False, "channels_last": True, "grad_checkpointing": False}),
    "train_bf16_cl": ("full model, bf16 autocast, channels-last, small tables",
                      {"bf16": True, "channels_last": True, "grad_checkpointing": False}),
    "train_bf16_cl_gc": ("full model, bf16 autocast, channels-last, grad checkpointing, small tables",
                         {"bf16": True, "channels_last": True, "grad_checkpointing": True}),
}
OTHER_CONFIGS = {
    "frozen": "frozen-encoder mode: feature caching + spot tower/heads training (cpu profile)",
    "predict_fp32": "prediction of section B4 end to end, fp32 eager NCHW",
    "predict_fast": "prediction of section B4 end to end, bf16 autocast + channels-last",
    "ckpt_sizes": "checkpoint size with reference tables vs tables sized from the data",
}


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import peak_rss_gib as _peak_rss_gib  # shared with bench_vs_reference


def _dataset(workdir: Path) -> Path:
    """Build (once) the 4-section HER2+ patch dataset used by every configuration."""
    out = workdir / "her2st4"
    if not (out / "mclstexp_dataset.json").exists():
        from mclstexp_hub.data.build import build_dataset

        build_dataset(
            "her2st", SHARED / "her2st", out, sections=[TEST_SECTION, *TRAIN_SECTIONS],
            genes_file=SHARED / "gene_lists" / "her2st_785.txt", progress=False,
        )
    return out


# ------------------------------------------------------------------- child: training
def _child_train(name: str, dataset_dir: str, steps: int, compile_model: bool) -> dict:
    import torch
    from transformers import TrainerCallback

    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.trainer import train_model

    settings = dict(TRAIN_CONFIGS[name][1])
    paper_tables = settings.pop("paper_tables", False)
    meta = load_dataset_metadata(dataset_dir)
    batch = 128
    n = batch * (steps + 1)
    dataset = load_st_dataset(dataset_dir, sections=TRAIN_SECTIONS).shuffle(seed=0).select(range(n))
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

    profile = get_profile("paper").replace(**settings)
    overrides = {"max_position": 65536} if paper_tables else {}
    if compile_model:
        torch._dynamo.config.cache_size_limit = 64
    train_model(
        dataset, meta["gene_names"], None, profile=profile, config_overrides=overrides,
        max_steps=steps + 1, dataset_metadata=meta, progress=False, callbacks=[StepTimer()],
    )
    measured = times[1:]  # the first step warms up oneDNN kernels
    seconds = sum(measured) / len(measured)
    return {"spots_s": batch / seconds, "step_s": seconds, "warmup_s": times[0],
            "peak_gib": _peak_rss_gib()}


def _child_frozen(dataset_dir: str, epochs: int) -> dict:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.trainer import train_model

    meta = load_dataset_metadata(dataset_dir)
    dataset = load_st_dataset(dataset_dir, sections=TRAIN_SECTIONS)
    profile = get_profile("cpu").replace(epochs=epochs)
    t0 = time.perf_counter()
    result = train_model(dataset, meta["gene_names"], None, profile=profile,
                         dataset_metadata=meta, progress=False)
    total = time.perf_counter() - t0
    train_s = result.timings["train_seconds"]
    n = result.train_spots
    # encoder passes over the training patches: clean view, augmented views, BatchNorm pass
    passes = (profile.n_feature_views + int(profile.include_clean_view)
              + int(profile.recalibrate_batchnorm))
    return {
        "train_spots": n, "epochs": epochs, "total_s": total, "train_s": train_s,
        "train_spots_s": n * epochs / train_s,
        "feature_spots_s": n * passes / result.timings["feature_seconds"],
        "feature_s": result.timings["feature_seconds"],
        "peak_gib": _peak_rss_gib(),
    }


# ------------------------------------------------------------------ child: prediction
def _child_predict(dataset_dir: str, fast: bool) -> dict:
    import contextlib

    import torch

    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.data.patches import iter_patches
    from mclstexp_hub.data.readers.her2st import read_her2st
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
    from mclstexp_hub.training.bank import build_bank_from_dataset
    from mclstexp_hub.training.trainer import build_training_config

    meta = load_dataset_metadata(dataset_dir)
    reference = load_st_dataset(dataset_dir, sections=TRAIN_SECTIONS)
    config = build_training_config(meta["gene_names"], positions=torch.tensor([[0, 0], [63, 63]]))
    model = MclSTExpModel(config).eval()
    build_bank_from_dataset(model, reference, progress=False, dataset_metadata=meta)
    section = read_her2st(SHARED / "her2st", [TEST_SECTION])[0]
    if fast:
        model.image_encoder.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast else contextlib.nullcontext()
    timings = {"decode_patches": 0.0, "image_tower": 0.0, "retrieval": 0.0}
    # warm up the kernels on one batch, as any long-running service would have
    with torch.no_grad(), autocast:
        model.get_image_features(torch.zeros(8, 3, 224, 224))
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    patches = torch.from_numpy(
        __import__("numpy").stack(list(iter_patches(section, None, 224)))
    ).permute(0, 3, 1, 2)
    timings["decode_patches"] = time.perf_counter() - t0
    embeds = []
    t0 = time.perf_counter()
    with torch.no_grad(), autocast:
        for start in range(0, len(patches), 64):
            x = scale_pixel_values(patches[start : start + 64].contiguous(), "unit")
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            embeds.append(model.get_image_features(x).pooler_output.float())
    timings["image_tower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prediction = model.predict_expression(image_embeds=torch.cat(embeds))
    timings["retrieval"] = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    n = prediction.expression.shape[0]
    return {"spots": n, "spots_s": n / total, "tower_spots_s": n / timings["image_tower"],
            **{f"{k}_s": v for k, v in timings.items()}, "peak_gib": _peak_rss_gib()}


def _child_ckpt_sizes(dataset_dir: str) -> dict:
    import torch

    from mclstexp_hub.data.hf_dataset import load_dataset_metadata
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.training.trainer import build_training_config

    meta = load_dataset_metadata(dataset_dir)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in (("reference_tables", {"max_position": 65536}), ("data_tables", {})):
            config = build_training_config(meta["gene_names"], config_overrides=overrides,
                                           positions=torch.tensor([[3, 5], [29, 31]]))
            model = MclSTExpModel(config)
            model.save_pretrained(Path(tmp) / label)
            sizes[label + "_mb"] = (Path(tmp) / label / "model.safetensors").stat().st_size / 1e6
            sizes[label + "_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            sizes[label + "_max_position"] = config.max_position
    return sizes


# ------------------------------------------------------------------------ parent
def _run_child(name: str, dataset_dir: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", name, "--dataset", str(dataset_dir),
               "--steps", str(args.steps), "--frozen-epochs", str(args.frozen_epochs)]
    if args.compile:
        command.append("--compile")
    t0 = time.perf_counter()
    proc = subprocess.run(command, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per config (after 1 warm-up)")
    parser.add_argument("--frozen-epochs", type=int, default=150)
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    parser.add_argument("--workdir", default=None, help="where to build the dataset (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child in TRAIN_CONFIGS:
            out = _child_train(args.child, args.dataset, args.steps, args.compile)
        elif args.child == "frozen":
            out = _child_frozen(args.dataset, args.frozen_epochs)
        elif args.child.startswith("predict"):
            out = _child_predict(args.dataset, fast=args.child == "predict_fast")
        else:
            out = _child_ckpt_sizes(args.dataset)
        print(json.dumps(out))
        return 0

    if not (SHARED / "her2st").is_dir():
        print(f"{SHARED / 'her2st'} not found: this benchmark needs the shared HER2+ data "
              "(set MCLSTEXP_SHARED_DATA).", file=sys.stderr)
        return 2
    names = [*TRAIN_CONFIGS, *OTHER_CONFIGS]
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(names) - set(TRAIN_CONFIGS) - set(OTHER_CONFIGS))
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; choose from {[*TRAIN_CONFIGS, *OTHER_CONFIGS]}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mclstexp-bench-"))
    dataset_dir = _dataset(workdir)
    print(f"machine: {os.cpu_count()} CPU cores; torch threads {__import__('torch').get_num_threads()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    results = {}
    for name in names:
        results[name] = r = _run_child(name, dataset_dir, args)
        if "error" in r:
            print(f"{name:18s} ERROR {r['error']}", flush=True)
            continue
        if name in TRAIN_CONFIGS:
            print(f"{name:18s} {r['spots_s']:6.2f} spots/s  step {r['step_s']:6.1f} s  peak RSS "
                  f"{r['peak_gib']:5.2f} GiB  — {TRAIN_CONFIGS[name][0]}", flush=True)
        elif name == "frozen":
            print(f"{name:18s} training {r['train_spots_s']:8.1f} spots/s ({r['epochs']} epochs of "
                  f"{r['train_spots']} spots in {r['train_s']:.0f} s); feature caching "
                  f"{r['feature_spots_s']:.1f} patch-views/s; whole run {r['total_s']:.0f} s; peak RSS "
                  f"{r['peak_gib']:.2f} GiB", flush=True)
        elif name.startswith("predict"):
            print(f"{name:18s} {r['spots_s']:6.2f} spots/s end to end ({r['spots']} spots; image tower "
                  f"{r['tower_spots_s']:.1f} spots/s, patches {r['decode_patches_s']:.1f} s, retrieval "
                  f"{r['retrieval_s'] * 1000:.0f} ms); peak RSS {r['peak_gib']:.2f} GiB", flush=True)
        else:
            print(f"{name:18s} reference tables: {r['reference_tables_mb']:.0f} MB "
                  f"({r['reference_tables_params_m']:.1f} M params); tables from data "
                  f"(max_position {r['data_tables_max_position']}): {r['data_tables_mb']:.0f} MB "
                  f"({r['data_tables_params_m']:.1f} M params)", flush=True)
    print("\nratios (measured here, same run):")
    base = results.get("train_fp32", {})
    for name in TRAIN_CONFIGS:
        r = results.get(name, {})
        if base.get("spots_s") and r.get("spots_s") and name != "train_fp32":
            print(f"  {name:18s} {r['spots_s'] / base['spots_s']:.2f}x spots/s, "
                  f"{r['peak_gib'] / base['peak_gib']:.2f}x peak RSS vs train_fp32")
    pf, pq = results.get("predict_fast", {}), results.get("predict_fp32", {})
    if pf.get("spots_s") and pq.get("spots_s"):
        print(f"  predict_fast       {pf['spots_s'] / pq['spots_s']:.2f}x spots/s vs predict_fp32")
    print(f"ratios vs the authors' code on this machine (quoted, not measured here: "
          f"{QUOTED['train_spots_s']} spots/s at {QUOTED['train_peak_gib']} GiB training, "
          f"{QUOTED['predict_spots_s']} spots/s prediction, {QUOTED['ckpt_mb']} MB checkpoint):")
    for name in TRAIN_CONFIGS:
        r = results.get(name, {})
        if r.get("spots_s"):
            print(f"  {name:18s} {r['spots_s'] / QUOTED['train_spots_s']:.2f}x spots/s, "
                  f"{r['peak_gib'] / QUOTED['train_peak_gib']:.2f}x peak RSS")
    for name in ("predict_fp32", "predict_fast"):
        r = results.get(name, {})
        if r.get("spots_s"):
            print(f"  {name:18s} {r['spots_s'] / QUOTED['predict_spots_s']:.2f}x spots/s")
    if results.get("ckpt_sizes", {}).get("data_tables_mb"):
        print(f"  checkpoint         {results['ckpt_sizes']['data_tables_mb'] / QUOTED['ckpt_mb']:.2f}x size")
    print(f"load average at end {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
