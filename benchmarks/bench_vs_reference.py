"""Our code side by side with the authors' (github.com/ZhicengShi/mclSTExp), measured in ONE run.

    .venv/bin/python benchmarks/bench_vs_reference.py --reference-repo /tmp/mclstexp_ref \\
        [--data-dir ../shared/data/her2st] [--out results.json] [--repeats 3] [--quick]
        [--only tower,predict,large,train,frozen]

The authors' code is imported at run time from --reference-repo (sys.path insert) by a small
driver script this benchmark writes into a temporary folder; nothing of theirs is copied into
this repository. Their `ImageEncoder` asks torchvision for `DenseNet121_Weights.DEFAULT` (a
download; there is no network here), so the driver replaces `torchvision.models.densenet121` by
`densenet121(weights=None)` before importing their `model.py`: both sides are randomly
initialised. Their loss calls `.cuda()` on its label matrix; on a CPU-only machine the driver
makes `Tensor.cuda` a no-op. `dataset.py` and `evel_her2st.py` cannot be imported (hard-coded
Windows paths, module-level evaluation, cv2/scprep): the driver repeats their few lines (crop at
`np.floor(pixel)` ± 112 with PIL, `transforms.ToTensor()`, DataLoader batch 32, `get_embeddings`,
`find_matches` top-200 and the 1/L1² weighted mean) verbatim.

Same weights on both sides: the driver initialises their `mclSTExp_Attention` (seed 0) and saves
its state dict; `conversion/convert_mclstexp_original.py` converts it, with a spot bank of the
other HER2+ sections (the paper's A2–G3 minus the four imaged ones) embedded by the converted
spot tower in the authors' batches of 32, into our checkpoint (`write_checkpoint`). The driver
embeds the same bank with *their* spot tower at run time, as their evaluation does. The first
repeat of the section prediction compares the two predictions (max abs difference).

Every configuration and repeat is one subprocess, alternating theirs and ours:
  tower    image tower (encoder + projection) patches/s, batch 32, 224 px, random pixels;
           theirs fp32; ours fp32 and bf16 autocast + channels-last
  predict  whole-section prediction of C4 (184 spots): whole-process wall time (interpreter
           start-up, imports, model load, slide decode, bank, tower, retrieval, writing);
           theirs = driver, ours = `python -m mclstexp_hub.cli predict` (--precision fp32 and
           auto when the CLI has --precision)
  large    the same on a >= 2,000-spot grid over section B4 (pitch chosen for the count)
  fixed    the same for TWO spots of the section (their find_matches squeezes a single query
           away): the fixed cost of a prediction (start-up, imports, model load, slide
           decode, writing) that no batch size amortises
  train    full-model training steps at batch 128 on random pixels/expression/positions:
           theirs (their forward + loss, Adam 1e-4 / 1e-3); ours (forward with return_loss,
           AdamW 1e-4 / 1e-3) fp32, bf16 autocast + channels-last, + gradient checkpointing,
           and the image tower in micro-batches of 8 (`mclstexp train --micro-batch 8`: the
           whole-batch loss, gradients cached at the embeddings), with the reference's 65,536-row
           position tables and with tables sized from the data (what `mclstexp train` builds)
  frozen   our `--profile cpu` (frozen encoder, cached features) on section C4 via train_model

Peak RSS is each child's own (`os.wait4` rusage). The heavy parts (large, train, frozen) run
`--heavy-repeats` times (default 1); a 2-core CPU needs ~2 min per training step at batch 128.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _measure import (
    load_average,
    mem_available_gib,
    now_iso,
    peak_rss_gib,
    run_measured,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "her2st"
IMAGED = ["B4", "C2", "C3", "C4"]
PAPER_SECTIONS = slice(1, 33)  # sorted(ST-cnts)[1:33] = A2..G3, as their HERDataset
PARTS = ("tower", "predict", "large", "fixed", "train", "frozen")
# their train.py defaults (densenet121, 785 genes)
REF_ARGS = dict(encoder_name="densenet121", spot_dim=785, temperature=1.0, image_dim=1024,
                projection_dim=256, heads_num=8, heads_dim=64, head_layers=2, dropout=0.0)
# peak RSS of a batch-128 training step seen on this machine (GiB), to refuse what cannot fit
# (`_mb8`: the image tower in micro-batches of 8, training/micro_batch.py; `_fit`: position
# tables sized from the data as `mclstexp train` sizes them, 64 rows here, instead of 65,536)
TRAIN_GIB_AT_128 = {"theirs": 21.5, "ours_fp32": 19.5, "ours_fp32_cl": 19.5, "ours_fp32_cl_gc": 6.0,
                    "ours_fp32_cl_mb8": 4.5, "ours_fp32_cl_mb8_fit": 3.0,
                    "ours_bf16_cl": 10.0, "ours_bf16_cl_gc": 6.0, "ours_bf16_cl_mb8_fit": 3.0,
                    # what `mclstexp train --precision auto` runs from pixels on such a CPU:
                    # bf16, channels-last, tables sized from the data (+ checkpointing: auto);
                    # peaks of a batch-128 CLI epoch on C4 (docs/training.md), not guesses
                    "ours_bf16_cl_fit": 9.3, "ours_bf16_cl_gc_fit": 5.1}
# bf16 variants only where the CPU computes bf16 natively (elsewhere it is emulated, see --precision)
BF16_TRAIN_VARIANTS = tuple(name for name in TRAIN_GIB_AT_128 if "bf16" in name)

# ---------------------------------------------------------------- the authors' side (driver)
REFERENCE_DRIVER = r'''
"""Driver for the authors' mclSTExp code, written by benchmarks/bench_vs_reference.py."""
import json, resource, sys, time
T0 = time.perf_counter()
SPEC = json.loads(open(sys.argv[1]).read())
sys.path.insert(0, SPEC["reference_repo"])
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as _tvm
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset
Image.MAX_IMAGE_PIXELS = None

_densenet121 = _tvm.densenet121
def _densenet121_no_download(*args, weights=None, **kwargs):
    # DenseNet121_Weights.DEFAULT is a download and there is no network: random init instead
    return _densenet121(*args, weights=None, **kwargs)
_tvm.densenet121 = _densenet121_no_download
if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self  # their loss calls label.cuda()

from model import mclSTExp_Attention  # their model.py

T_IMPORT = time.perf_counter() - T0


def build_model():
    torch.manual_seed(SPEC.get("seed", 0))
    return mclSTExp_Attention(**SPEC["model_args"])


def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class Patches(Dataset):
    """Their HERDataset (train=False) for one section: floor centres, PIL crop, ToTensor."""
    def __init__(self, image_path, centres):
        self.im = Image.open(image_path)
        self.center = np.floor(np.asarray(centres)).astype(int)
        self.r = 224 // 2
    def __len__(self):
        return len(self.center)
    def __getitem__(self, idx):
        x, y = self.center[idx]
        patch = self.im.crop((x - self.r, y - self.r, x + self.r, y + self.r))
        return {"image": transforms.ToTensor()(patch)}


def find_matches(spot_embeddings, query_embeddings, top_k=1):
    # evel_her2st.find_matches
    spot_embeddings = torch.tensor(spot_embeddings)
    query_embeddings = torch.tensor(query_embeddings)
    query_embeddings = F.normalize(query_embeddings, p=2, dim=-1)
    spot_embeddings = F.normalize(spot_embeddings, p=2, dim=-1)
    dot_similarity = query_embeddings @ spot_embeddings.T
    _, indices = torch.topk(dot_similarity.squeeze(0), k=top_k)
    return indices.cpu().numpy()


def predict():
    t = time.perf_counter()
    model = build_model()
    model.load_state_dict(torch.load(SPEC["weights"], map_location="cpu"))
    model.eval()
    t_model = time.perf_counter() - t
    expr = np.load(SPEC["bank_expression"]).astype(np.float32)
    pos = np.load(SPEC["bank_positions"])
    t = time.perf_counter()
    spot_embeddings = []
    with torch.no_grad():  # evel_her2st.get_embeddings, spot side (batches of 32, in order)
        for s in range(0, len(expr), 32):
            spot_feature = torch.from_numpy(expr[s:s + 32])
            p = torch.from_numpy(pos[s:s + 32])
            spot_feature = spot_feature + model.x_embed(p[:, 0].long()) + model.y_embed(p[:, 1].long())
            spot_embedding = model.spot_encoder(spot_feature.unsqueeze(dim=0))
            spot_embeddings.append(model.spot_projection(spot_embedding).squeeze(dim=0))
    spot_key = torch.cat(spot_embeddings).numpy()
    expression_key = expr
    t_bank = time.perf_counter() - t
    out = {"import_s": T_IMPORT, "model_s": t_model, "bank_s": t_bank, "bank_spots": len(expr),
           "sections": []}
    preds = []
    for q in SPEC["queries"]:
        t = time.perf_counter()
        loader = DataLoader(Patches(q["image"], q["centres"]), batch_size=32, shuffle=False,
                            num_workers=0)
        image_embeddings = []
        with torch.no_grad():  # evel_her2st.get_embeddings, image side
            for batch in loader:
                image_features = model.image_encoder(batch["image"])
                image_embeddings.append(model.image_projection(image_features))
        image_query = torch.cat(image_embeddings).numpy()
        t_img = time.perf_counter() - t
        t = time.perf_counter()
        indices = find_matches(spot_key, image_query, top_k=SPEC.get("top_k", 200))
        matched_spot_expression_pred = np.zeros((indices.shape[0], expression_key.shape[1]))
        for i in range(indices.shape[0]):  # evel_her2st, method "weighted"
            a = np.linalg.norm(spot_key[indices[i, :], :] - image_query[i, :], axis=1, ord=1)
            reciprocal_of_square_a = np.reciprocal(a ** 2)
            weights = reciprocal_of_square_a / np.sum(reciprocal_of_square_a)
            weights = weights.flatten()
            matched_spot_expression_pred[i, :] = np.average(expression_key[indices[i, :], :],
                                                            axis=0, weights=weights)
        preds.append(matched_spot_expression_pred)
        out["sections"].append({"spots": len(image_query), "images_s": t_img,
                                "retrieval_s": time.perf_counter() - t})
    if SPEC.get("out"):
        np.save(SPEC["out"], np.concatenate(preds).astype(np.float32))
    out["spots"] = sum(s["spots"] for s in out["sections"])
    return out


def tower():
    model = build_model().eval()
    x = torch.rand(SPEC["batch"], 3, 224, 224)
    with torch.no_grad():
        model.image_projection(model.image_encoder(x))  # warm-up
        t = time.perf_counter()
        for _ in range(SPEC["batches"]):
            model.image_projection(model.image_encoder(x))
        dt = time.perf_counter() - t
    return {"patches_s": SPEC["batch"] * SPEC["batches"] / dt, "seconds": dt}


def train():
    model = build_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-3)  # train.py
    g = torch.Generator().manual_seed(1)
    def batch(n):
        return {"image": torch.rand(n, 3, 224, 224, generator=g),
                "expression": torch.rand(n, 785, generator=g) * 3,
                "position": torch.randint(0, 64, (n, 2), generator=g).float()}
    def step(b):
        loss = model(b)  # their forward returns the symmetric contrastive loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()
    t = time.perf_counter()
    step(batch(SPEC["warmup_batch"]))
    warm = time.perf_counter() - t
    times = []
    for _ in range(SPEC["steps"]):
        b = batch(SPEC["batch"])
        t = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    return {"spots_s": SPEC["batch"] / s, "step_s": s, "warmup_s": warm}


def init():
    model = build_model()
    torch.save(model.state_dict(), SPEC["save"])
    return {"params": sum(p.numel() for p in model.parameters())}


result = {"init": init, "predict": predict, "tower": tower, "train": train}[SPEC["mode"]]()
result["peak_gib_self"] = peak_gib()
result["torch_threads"] = torch.get_num_threads()
print(json.dumps(result))
'''


def write_reference_driver(folder: str | os.PathLike) -> Path:
    """Write the driver for the authors' code into `folder` (a temp dir); returns its path."""
    path = Path(folder) / "mclstexp_reference_driver.py"
    path.write_text(textwrap.dedent(REFERENCE_DRIVER).lstrip())
    return path


def reference_command(driver: Path, spec: dict, folder: Path, tag: str) -> list[str]:
    """The command running the driver on `spec` (written next to it as JSON)."""
    spec_path = Path(folder) / f"spec_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    return [sys.executable, str(driver), str(spec_path)]


# --------------------------------------------------------------------------- pure helpers
def grid_centres(xs, ys, n_target: int, margin: int = 112):
    """A square grid over the bounding box of (xs, ys) with at least `n_target` points.

    Returns (centres (n, 2) float array, pitch in pixels). The box is the section's spots' box,
    so every patch lies inside the image.
    """
    import numpy as np

    x0, x1 = float(np.min(xs)), float(np.max(xs))
    y0, y1 = float(np.min(ys)), float(np.max(ys))
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    pitch = max(int(math.sqrt(w * h / n_target)), 1)
    while True:
        gx = np.arange(x0, x1 + 1e-9, pitch)
        gy = np.arange(y0, y1 + 1e-9, pitch)
        if len(gx) * len(gy) >= n_target or pitch == 1:
            break
        pitch -= 1
    xx, yy = np.meshgrid(gx, gy)
    return np.stack([xx.ravel(), yy.ravel()], axis=1), pitch


def _native_bf16() -> bool:
    from mclstexp_hub.models.mclstexp.precision_mclstexp import cpu_has_native_bf16

    return cpu_has_native_bf16()


def fit_batch(need_gib_at_128: float, batch: int, available_gib: float | None,
              headroom_gib: float = 1.5) -> int:
    """Largest power-of-two batch <= `batch` whose estimated peak fits in available memory."""
    if available_gib is None:
        return batch
    b = batch
    while b > 8 and need_gib_at_128 * b / 128 + headroom_gib > available_gib:
        b //= 2
    return b


def summarise(values: list[float]) -> dict:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"n": 0}
    mid = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    return {"n": len(vals), "median": mid, "min": vals[0], "max": vals[-1]}


def ratio_rows(results: dict) -> list[dict]:
    """Rows (part, metric, theirs, ours per config, ratio ours/theirs) from the `results` dict.

    `results[part][config]` is a list of run dicts; a metric's figure is the median over runs.
    Higher-is-better metrics (spots/s, patches/s) and lower-is-better (wall s, peak GiB) are
    both reported as ours/theirs, the row says which way is better.
    """
    metrics = {"tower": [("patches_s", "patches/s", "higher")],
               "predict": [("spots_s", "spots/s (whole process)", "higher"),
                           ("wall_s", "wall s", "lower"), ("peak_gib", "peak RSS GiB", "lower")],
               "large": [("spots_s", "spots/s (whole process)", "higher"),
                         ("wall_s", "wall s", "lower"), ("peak_gib", "peak RSS GiB", "lower")],
               "fixed": [("wall_s", "wall s, 2 spots (fixed cost)", "lower"),
                         ("peak_gib", "peak RSS GiB", "lower")],
               "train": [("spots_s", "spots/s", "higher"), ("peak_gib", "peak RSS GiB", "lower")],
               "frozen": [("train_spots_s", "spots/s (training epochs)", "higher"),
                          ("peak_gib", "peak RSS GiB", "lower")]}
    rows = []
    for part, mets in metrics.items():
        configs = results.get(part) or {}
        if not configs:
            continue
        theirs = configs.get("theirs", [])
        for key, label, better in mets:
            t = summarise([r.get(key) for r in theirs if "error" not in r])
            for name, runs in configs.items():
                if name == "theirs":
                    continue
                o = summarise([r.get(key) for r in runs if "error" not in r])
                if not o["n"]:
                    continue
                ratio = o["median"] / t["median"] if t.get("n") and t["median"] else None
                rows.append({"part": part, "metric": label, "better": better, "config": name,
                             "theirs": t.get("median"), "ours": o["median"], "ratio": ratio,
                             "n_theirs": t["n"], "n_ours": o["n"],
                             "batch": runs[0].get("batch") if runs else None})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of `ratio_rows` output."""
    def fmt(v):
        if v is None:
            return "—"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"

    lines = ["| part | metric | ours: config | theirs | ours | ours/theirs | runs (t/o) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        batch = f" (batch {r['batch']})" if r.get("batch") else ""
        lines.append(f"| {r['part']} | {r['metric']} ({r['better']} is better) | {r['config']}{batch} "
                     f"| {fmt(r['theirs'])} | {fmt(r['ours'])} | {ratio} | {r['n_theirs']}/{r['n_ours']} |")
    return "\n".join(lines)


def cli_has_option(option: str) -> bool:
    """Whether our `predict` CLI has `option` (the benchmark also runs older checkouts)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "mclstexp_hub.cli", "predict", "--help"],
                          capture_output=True, text=True, cwd=str(ROOT), check=False)
    return option in proc.stdout


def cli_has_precision() -> bool:
    return cli_has_option("--precision")


# -------------------------------------------------------------------- our side (children)
def _our_config(n_genes: int = 785, **overrides):
    from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig

    # default: DenseNet-121 and the reference's 65,536-row position tables
    return MclSTExpConfig(gene_names=[f"g{i}" for i in range(n_genes)], **overrides)


def child_tower(spec: dict) -> dict:
    import contextlib

    import torch

    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel

    torch.manual_seed(0)
    model = MclSTExpModel(_our_config()).eval()
    if spec["variant"] in ("onnx", "openvino_bf16"):
        import tempfile

        from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import (
            export_image_tower,
            load_onnx_tower,
        )

        x = torch.rand(spec["batch"], 3, 224, 224)
        # onnx: ONNX Runtime fp32; openvino_bf16: the same export in OpenVINO bf16
        backend, precision = (("onnxruntime", "fp32") if spec["variant"] == "onnx"
                              else ("openvino", "bf16"))
        with tempfile.TemporaryDirectory() as folder:
            export_image_tower(model, folder)
            tower, _ = load_onnx_tower(model, folder, backend)
            tower(x, precision)
            t = time.perf_counter()
            for _ in range(spec["batches"]):
                tower(x, precision)
            dt = time.perf_counter() - t
        return {"patches_s": spec["batch"] * spec["batches"] / dt, "seconds": dt}
    fast = spec["variant"].startswith("bf16")
    x = torch.rand(spec["batch"], 3, 224, 224)
    if "_cl" in spec["variant"]:
        model.image_encoder.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if fast else contextlib.nullcontext
    with torch.no_grad(), ctx():
        model.get_image_features(pixel_values=x)
        t = time.perf_counter()
        for _ in range(spec["batches"]):
            model.get_image_features(pixel_values=x)
        dt = time.perf_counter() - t
    return {"patches_s": spec["batch"] * spec["batches"] / dt, "seconds": dt}


def child_train(spec: dict) -> dict:
    import contextlib

    import torch

    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel

    import re

    from mclstexp_hub.training.micro_batch import micro_batched_backward
    from mclstexp_hub.training.trainer import derive_max_position

    torch.manual_seed(0)
    fit = spec["variant"].endswith("_fit")  # tables for the benchmark's positions, randint(0, 64)
    config = _our_config(**({"max_position": derive_max_position(torch.tensor([[63, 63]]))} if fit else {}))
    model = MclSTExpModel(config).train()
    micro = re.search(r"_mb(\d+)", spec["variant"])
    micro = int(micro.group(1)) if micro else None
    bf16 = spec["variant"].startswith("bf16")
    channels_last = "_cl" in spec["variant"]
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    if "_gc" in spec["variant"]:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def batch(n):
        x = torch.rand(n, 3, 224, 224, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.rand(n, 785, generator=g) * 3, torch.randint(0, 64, (n, 2), generator=g)

    def step(b):
        optimizer.zero_grad()
        if micro:
            micro_batched_backward(model, b[0], b[1], b[2], micro, autocast=ctx)
        else:
            with ctx():
                loss = model(pixel_values=b[0], expression=b[1], positions=b[2], return_loss=True).loss
            loss.backward()
        optimizer.step()

    t = time.perf_counter()
    step(batch(spec["warmup_batch"]))
    warm = time.perf_counter() - t
    times = []
    for _ in range(spec["steps"]):
        b = batch(spec["batch"])
        t = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    return {"spots_s": spec["batch"] / s, "step_s": s, "warmup_s": warm}


def child_frozen(spec: dict) -> dict:
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.training.profiles import get_profile
    from mclstexp_hub.training.trainer import train_model

    out = Path(spec["workdir"]) / "frozen_dataset"
    if not (out / "mclstexp_dataset.json").exists():
        build_dataset("her2st", spec["data_dir"], out, sections=spec["sections"],
                      genes_file=spec["genes"], progress=False)
    meta = load_dataset_metadata(out)
    dataset = load_st_dataset(out, sections=spec["sections"])
    profile = get_profile("cpu").replace(epochs=spec["epochs"])
    t0 = time.perf_counter()
    result = train_model(dataset, meta["gene_names"], None, profile=profile,
                         dataset_metadata=meta, progress=False)
    total = time.perf_counter() - t0
    n = result.train_spots
    passes = profile.n_feature_views + int(profile.include_clean_view) + int(profile.recalibrate_batchnorm)
    return {"train_spots": n, "epochs": spec["epochs"], "train_model_s": total,
            "train_spots_s": n * spec["epochs"] / result.timings["train_seconds"],
            "feature_patches_s": n * passes / result.timings["feature_seconds"],
            "feature_s": result.timings["feature_seconds"]}


def child_setup(spec: dict) -> dict:
    """Bank expression of the other sections, query spot tables, weights, our checkpoint."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from conversion.convert_mclstexp_original import convert_checkpoint
    from mclstexp_hub.data.preprocess import normalize_expression, read_gene_panel
    from mclstexp_hub.data.readers.her2st import (
        find_her2st_image,
        list_her2st_sections,
        read_her2st_section,
    )

    work, data_dir = Path(spec["workdir"]), Path(spec["data_dir"])
    genes = read_gene_panel(spec["genes"])
    sections = sorted(list_her2st_sections(data_dir))[PAPER_SECTIONS]
    bank_sections = [s for s in sections if s not in IMAGED][: spec.get("bank_sections") or None]
    expr_files, pos_files = [], []
    for s in bank_sections:
        a = read_her2st_section(data_dir, s)
        X = normalize_expression(a[:, genes].X)
        np.save(work / f"bank_expr_{s}.npy", X)
        np.save(work / f"bank_pos_{s}.npy", a.obs[["array_x", "array_y"]].to_numpy().astype(np.int64))
        expr_files.append(str(work / f"bank_expr_{s}.npy"))
        pos_files.append(str(work / f"bank_pos_{s}.npy"))
    np.save(work / "bank_expr.npy", np.concatenate([np.load(f) for f in expr_files]))
    np.save(work / "bank_pos.npy", np.concatenate([np.load(f) for f in pos_files]))
    queries = {}
    for s in IMAGED:
        a = read_her2st_section(data_dir, s)
        image = str(find_her2st_image(data_dir, s))
        # both sides get the same integer centres: their np.floor of the spot file's pixels
        centres = np.floor(a.obs[["pixel_x", "pixel_y"]].to_numpy())
        for key, rows in ((s, slice(None)), (f"{s}_2spots", slice(0, 2))):  # 2 spots: fixed cost
            queries[key] = {"image": image, "centres": centres[rows].tolist()}
            pd.DataFrame({"pixel_x": centres[rows, 0], "pixel_y": centres[rows, 1],
                          "spot_id": a.obs_names[rows]}).to_csv(work / f"spots_{key}.csv", index=False)
    b4 = np.asarray(queries["B4"]["centres"])
    grid, pitch = grid_centres(b4[:, 0], b4[:, 1], spec["large_spots"])
    grid = np.floor(grid)
    queries["B4_grid"] = {"image": queries["B4"]["image"], "centres": grid.tolist(), "pitch": pitch}
    pd.DataFrame({"pixel_x": grid[:, 0], "pixel_y": grid[:, 1],
                  "spot_id": [f"g{i}" for i in range(len(grid))]}).to_csv(work / "spots_B4_grid.csv", index=False)
    (work / "queries.json").write_text(json.dumps(queries))
    t = time.perf_counter()
    report = convert_checkpoint(spec["weights"], spec["genes"], work / "ours_ckpt",
                                reference_expression=expr_files, reference_positions=pos_files,
                                section_names=bank_sections, slice_positions=True,
                                expression_layout="spots-by-genes", overwrite=True)
    out = {"bank_sections": bank_sections, "bank_spots": report.bank_spots,
           "grid_spots": len(grid), "grid_pitch_px": pitch, "convert_s": time.perf_counter() - t,
           "checkpoint_mb": report.total_bytes / 1e6, "position_rows_saved": report.position_rows_saved}
    if _has_onnxruntime():  # what `mclstexp onnx` writes; `--backend auto` then uses it on CPU
        from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
        from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import export_image_tower

        model = MclSTExpModel.from_pretrained(work / "ours_ckpt", load_spot_bank=False).eval()
        info = export_image_tower(model, work / "ours_ckpt")
        out["onnx_export_s"] = info["export_seconds"]
        out["onnx_max_abs_difference"] = info["max_abs_difference_vs_torch"]
    return out


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _export_tower_variants() -> tuple[str, ...]:
    """The tower variants that run the ONNX export here (`precision_mclstexp.export_runtime`)."""
    from mclstexp_hub.models.mclstexp.precision_mclstexp import export_runtime

    return tuple(name for name, backend, precision in (("onnx", "onnxruntime", "fp32"),
                                                       ("openvino_bf16", "openvino", "bf16"))
                 if export_runtime(backend, precision)[0] is not None)


CHILDREN = {"tower": child_tower, "train": child_train, "frozen": child_frozen, "setup": child_setup}


def _child_main(name: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    out = CHILDREN[name](spec)
    out["peak_gib_self"] = peak_rss_gib()
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------- the parent
class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.driver = write_reference_driver(work)
        self.n = 0
        self.results: dict = {p: {} for p in PARTS}
        self.log: list[dict] = []

    def _ours_cmd(self, child: str, spec: dict) -> list[str]:
        self.n += 1
        path = self.work / f"ours_{child}_{self.n}.json"
        path.write_text(json.dumps(spec))
        return [sys.executable, str(Path(__file__).resolve()), "--child", child, "--spec", str(path)]

    def _theirs_cmd(self, spec: dict) -> list[str]:
        self.n += 1
        spec = {"reference_repo": str(self.args.reference_repo), "model_args": REF_ARGS, **spec}
        return reference_command(self.driver, spec, self.work, str(self.n))

    def run(self, part: str, config: str, command: list[str], extra: dict | None = None) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = run_measured(command, env=env, cwd=str(ROOT), timeout=self.args.child_timeout)
        rec = {"wall_s": r.wall_s, "peak_gib": r.peak_rss_gib, "load_before": r.load_before,
               "load_after": r.load_after, **(extra or {})}
        if r.returncode != 0:
            rec["error"] = r.tail()
        else:
            last = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
            if last:
                rec.update(json.loads(last[-1]))
        if part in ("predict", "large", "fixed") and "error" not in rec and rec.get("spots"):
            rec["spots_s"] = rec["spots"] / rec["wall_s"]  # whole process, start-up included
        self.results.setdefault(part, {}).setdefault(config, []).append(rec)
        self._print(part, config, rec)
        self._save()
        return rec

    def _print(self, part, config, rec):
        if "error" in rec:
            print(f"  {part:8s} {config:18s} ERROR: {rec['error'].splitlines()[-1]}", flush=True)
            return
        keys = [k for k in ("patches_s", "spots_s", "train_spots_s", "wall_s", "peak_gib", "batch")
                if rec.get(k) is not None]
        print(f"  {part:8s} {config:18s} " + "  ".join(f"{k}={rec[k]:.3g}" for k in keys)
              + f"  load={rec['load_before'][0]:.1f}", flush=True)

    def _save(self):
        if self.args.out:
            self.payload()  # refresh
            Path(self.args.out).write_text(json.dumps(self.payload(), indent=1))

    def payload(self) -> dict:
        return {**self.meta, "results": self.results, "table": ratio_rows(self.results)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-repo", type=Path, help="checkout of ZhicengShi/mclSTExp")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--genes", type=Path, default=None, help="default: DATA/../gene_lists/her2st_785.txt")
    p.add_argument("--out", default="results.json")
    p.add_argument("--table-out", default=None, help="markdown table (default: OUT with .md)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of tower and section prediction")
    p.add_argument("--heavy-repeats", type=int, default=1, help="repeats of large/train/frozen")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    p.add_argument("--section", default="C4", choices=IMAGED)
    p.add_argument("--large-spots", type=int, default=2000)
    p.add_argument("--tower-batches", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=1, help="timed steps after a small warm-up")
    p.add_argument("--train-variants", nargs="+", default=None, metavar="NAME",
                   help=f"training configurations to run (default: all of {list(TRAIN_GIB_AT_128)})")
    p.add_argument("--frozen-epochs", type=int, default=30)
    p.add_argument("--child-timeout", type=float, default=1800)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 repeat, tower + section prediction + a batch-16 training "
                        "step of theirs and ours fp32 (14 min on 2 shared cores at load 4-6; "
                        "add --only tower,predict to shorten)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child_main(args.child, args.spec)
    if args.reference_repo is None or not (args.reference_repo / "model.py").is_file():
        p.error("--reference-repo must be a checkout of github.com/ZhicengShi/mclSTExp (has model.py)")
    if not (args.data_dir / "ST-cnts").is_dir():
        print(f"{args.data_dir} has no ST-cnts/: this benchmark needs the HER2+ data "
              "(see ../shared/data/README.md)", file=sys.stderr)
        return 2
    genes = args.genes or args.data_dir.parent / "gene_lists" / "her2st_785.txt"
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        p.error(f"unknown parts {unknown}; choose from {PARTS}")
    if bad := sorted(set(args.train_variants or ()) - set(TRAIN_GIB_AT_128)):
        p.error(f"unknown --train-variants {bad}; choose from {list(TRAIN_GIB_AT_128)}")
    if args.quick:
        args.repeats, args.heavy_repeats, args.tower_batches = 1, 1, 1
        args.train_batch, args.train_steps = 16, 1
        parts = [x for x in parts if x in ("tower", "predict", "train")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mclstexp-vs-ref-"))
    work.mkdir(parents=True, exist_ok=True)
    args.table_out = args.table_out or (str(Path(args.out).with_suffix(".md")) if args.out else None)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    import torch

    try:
        from mclstexp_hub.benchmark.runner import machine_description
        machine = machine_description()
    except Exception:  # noqa: BLE001
        import platform
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    has_precision = cli_has_precision()
    has_backend = cli_has_option("--backend")
    # ours_fp32: PyTorch fp32 (channels-last); ours_auto: the defaults a user gets (precision
    # and backend auto: the checkpoint's ONNX export in ONNX Runtime fp32, or OpenVINO bf16 on
    # a CPU with native bf16, where those are installed)
    predict_configs = ["ours_fp32"] + (["ours_auto"] if has_precision else [])
    bench = Bench(args, work)
    t_start = time.perf_counter()
    bench.meta = {
        "benchmark": "bench_vs_reference", "date": now_iso(), "machine": machine,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(), "mem_available_gib_start": mem_available_gib(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "reference_repo": str(args.reference_repo), "data_dir": str(args.data_dir),
        "parts": parts, "repeats": args.repeats, "heavy_repeats": args.heavy_repeats,
        "cli_has_precision": has_precision,
        "notes": [
            ("Both models randomly initialised (no pretrained weights reachable): the authors' "
             "ImageEncoder is built with torchvision densenet121(weights=None) instead of "
             "DenseNet121_Weights.DEFAULT (patched in the driver before importing their model.py)."),
            "Their loss calls .cuda(): Tensor.cuda is a no-op in their driver on this CPU machine.",
            ("Prediction: the same weights on both sides (their random init, seed 0, converted by "
             "conversion/convert_mclstexp_original.py with --slice-positions); bank = the paper's "
             "A2-G3 minus the imaged sections, embedded by each side's own spot tower "
             "(theirs at run time, as evel_her2st.py; ours precomputed in the checkpoint)."),
            "Spot centres: np.floor of the spot file's pixels, identical CSV for both sides.",
            ("Training: random pixels/expression/positions (speed only), one warm-up step at "
             "batch 16, then timed steps at --train-batch; shrunk to fit MemAvailable if needed."),
        ],
    }
    if not has_precision:
        print("our CLI predict has no --precision option: the ours_auto column is skipped")
    print(f"machine: {machine}; torch threads {torch.get_num_threads()}; load {load_average()}; "
          f"work dir {work}", flush=True)

    needs_setup = any(x in parts for x in ("predict", "large", "fixed"))
    if needs_setup:
        t = time.perf_counter()
        weights = work / "theirs_random_init.pt"
        init = bench.run("setup", "theirs_init", bench._theirs_cmd({"mode": "init", "save": str(weights)}))
        if "error" in init:
            print("their model could not be built:\n" + init["error"], file=sys.stderr)
            return 1
        setup = bench.run("setup", "setup", bench._ours_cmd("setup", {
            "workdir": str(work), "data_dir": str(args.data_dir), "genes": str(genes),
            "weights": str(weights), "large_spots": args.large_spots}))
        if "error" in setup:
            print("setup failed:\n" + setup["error"], file=sys.stderr)
            return 1
        bench.meta["setup"] = {**setup, "setup_s": time.perf_counter() - t}
        queries = json.loads((work / "queries.json").read_text())

    def predict_round(part: str, key: str, repeats: int):
        q = queries[key]
        spots_csv = work / f"spots_{key}.csv"
        n = len(q["centres"])
        for rep in range(repeats):
            theirs_out = work / f"theirs_{key}_{rep}.npy"
            bench.run(part, "theirs", bench._theirs_cmd({
                "mode": "predict", "weights": str(weights), "bank_expression": str(work / "bank_expr.npy"),
                "bank_positions": str(work / "bank_pos.npy"), "top_k": 200, "out": str(theirs_out),
                "queries": [{"image": q["image"], "centres": q["centres"]}]}),
                {"spots": n, "section": key, "repeat": rep})
            for cfg in predict_configs:
                out = work / f"{cfg}_{key}_{rep}.h5ad"
                cmd = [sys.executable, "-m", "mclstexp_hub.cli", "predict", "--model",
                       str(work / "ours_ckpt"), "--image", q["image"], "--spots", str(spots_csv),
                       "--out", str(out), "--quiet", "--overwrite", "--device", "cpu"]
                if has_precision:
                    cmd += ["--precision", cfg.split("_", 1)[1]]
                if has_backend:
                    cmd += ["--backend", "torch" if cfg == "ours_fp32" else "auto"]
                bench.run(part, cfg, cmd, {"spots": n, "section": key, "repeat": rep})
            if rep == 0:
                bench.meta.setdefault("prediction_agreement", {})[key] = _agreement(
                    theirs_out, [work / f"{cfg}_{key}_0.h5ad" for cfg in predict_configs], predict_configs)
                print(f"  agreement {key}: {bench.meta['prediction_agreement'][key]}", flush=True)
            bench._save()

    if "tower" in parts:
        for rep in range(args.repeats):
            spec = {"batch": 32, "batches": args.tower_batches}
            bench.run("tower", "theirs", bench._theirs_cmd({"mode": "tower", **spec}), {"repeat": rep})
            for variant in ("fp32", "fp32_cl", "bf16_cl") + _export_tower_variants():
                bench.run("tower", f"ours_{variant}", bench._ours_cmd("tower", {**spec, "variant": variant}),
                          {"repeat": rep})
    if "predict" in parts:
        predict_round("predict", args.section, args.repeats)
    if "fixed" in parts:
        predict_round("fixed", f"{args.section}_2spots", args.repeats)
    if "train" in parts:
        variants = ["theirs", "ours_fp32"] if args.quick else list(args.train_variants or TRAIN_GIB_AT_128)
        if not args.quick and not _native_bf16():
            variants = [v for v in variants if v not in BF16_TRAIN_VARIANTS]
            print("  train    this CPU has no native bf16 (--precision auto = fp32): bf16 training "
                  "variants skipped", flush=True)
        for rep in range(args.heavy_repeats):
            for name in variants:
                batch = fit_batch(TRAIN_GIB_AT_128[name], args.train_batch, mem_available_gib())
                spec = {"batch": batch, "steps": args.train_steps, "warmup_batch": min(16, batch)}
                extra = {"batch": batch, "repeat": rep, "mem_available_gib": mem_available_gib()}
                if batch != args.train_batch:
                    print(f"  train    {name}: batch {args.train_batch} does not fit in "
                          f"{extra['mem_available_gib']:.1f} GiB available; using {batch}", flush=True)
                if name == "theirs":
                    bench.run("train", name, bench._theirs_cmd({"mode": "train", **spec}), extra)
                else:
                    bench.run("train", name, bench._ours_cmd(
                        "train", {**spec, "variant": name.split("_", 1)[1]}), extra)
    if "frozen" in parts:
        for rep in range(args.heavy_repeats):
            bench.run("frozen", "ours_profile_cpu", bench._ours_cmd("frozen", {
                "workdir": str(work), "data_dir": str(args.data_dir), "genes": str(genes),
                "sections": [args.section], "epochs": args.frozen_epochs}), {"repeat": rep})
        # their code has no frozen-encoder mode: compare with their full-model training
        if bench.results["train"].get("theirs"):
            bench.results["frozen"]["theirs"] = [
                {**r, "train_spots_s": r.get("spots_s")} for r in bench.results["train"]["theirs"]]
    if "large" in parts:
        predict_round("large", "B4_grid", args.heavy_repeats)

    bench.meta["load_average_end"] = load_average()
    bench.meta["total_s"] = time.perf_counter() - t_start
    rows = ratio_rows(bench.results)
    table = format_table(rows)
    print("\n" + table)
    print(f"\nload average start {bench.meta['load_average_start']} end {bench.meta['load_average_end']}; "
          f"total {bench.meta['total_s']:.0f} s; work dir {work}")
    bench._save()
    if args.table_out:
        Path(args.table_out).write_text(_markdown(bench.payload(), table))
    return 0


def _agreement(theirs_npy: Path, ours_h5ad: list[Path], names: list[str]) -> dict:
    import numpy as np

    out = {}
    if not theirs_npy.is_file():
        return {"error": "no prediction of theirs"}
    theirs = np.load(theirs_npy)
    for name, path in zip(names, ours_h5ad, strict=True):
        if not path.is_file():
            out[name] = "no prediction"
            continue
        import anndata as ad

        X = ad.read_h5ad(path).X
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        if X.shape != theirs.shape:
            out[name] = f"shape {X.shape} vs theirs {theirs.shape}"
            continue
        d = np.abs(X - theirs)
        out[name] = {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
                     "theirs_max_abs": float(np.abs(theirs).max())}
    return out


def _markdown(payload: dict, table: str) -> str:
    setup = payload.get("setup", {})
    lines = [f"# Ours vs the authors' mclSTExp code — {payload['date']}", "",
             (f"Machine: {payload['machine']}; torch {payload['torch']}, {payload['torch_threads']} threads; "
              f"load average {payload['load_average_start']} at start, {payload.get('load_average_end')} at end; "
              f"total {payload.get('total_s', 0):.0f} s."), "",
             f"Command: `{payload['command']}`", "", table, ""]
    if payload.get("prediction_agreement"):
        lines += ["Prediction agreement (same weights, same centres; max |ours - theirs| over spots x genes):", ""]
        for key, v in payload["prediction_agreement"].items():
            lines.append(f"- {key}: {json.dumps(v)}")
        lines.append("")
    if setup:
        lines += [(f"Bank: {setup.get('bank_spots')} spots of {len(setup.get('bank_sections', []))} sections; "
                   f"grid workload {setup.get('grid_spots')} spots at {setup.get('grid_pitch_px')} px pitch on B4; "
                   f"our checkpoint {setup.get('checkpoint_mb', 0):.0f} MB."), ""]
    lines += ["Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
