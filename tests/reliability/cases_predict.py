"""Bad inputs to `mclstexp predict` (small synthetic checkpoint and slide)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .cases_data import _png_header_only
from .harness import Case


def _predict(assets, *, model=None, image=None, spots=None, out=None, work=None,
             extra=()) -> list[str]:
    args = ["predict", "--model", model or assets.checkpoint, "--image", image or assets.image]
    args += ["--spots", spots or assets.spots_csv] if spots != "tile" else ["--tile"]
    return [*args, "--out", out or work / "pred.h5ad", "--quiet", "--device", "cpu", *extra]


def _ckpt(work, assets) -> Path:
    return assets.copy("checkpoint", work)


# ------------------------------------------------------------------ outputs
def _out_is_image(work, assets):
    image = shutil.copy2(assets.image, work / "slide.jpg")
    return _predict(assets, image=image, out=image, work=work, extra=("--overwrite",))


def _out_foreign_h5ad(work, assets):
    target = work / "pred.h5ad"
    target.write_bytes(b"someone else's results")
    return _predict(assets, work=work, out=target, extra=("--overwrite",))


def _out_exists(work, assets):
    target = work / "pred.h5ad"
    target.write_bytes(b"x")
    return _predict(assets, work=work, out=target)


def _out_wrong_suffix(work, assets):
    return _predict(assets, work=work, out=work / "pred.csv")


def _plot_unknown_gene(work, assets):
    return _predict(assets, work=work, extra=("--plot", "NOT_A_GENE"))


def _plot_dir_is_file(work, assets):
    """The maps folder cannot be created: neither the .h5ad nor half the maps may remain."""
    blocker = work / "maps"
    blocker.write_text("a file where the folder should go")
    return _predict(assets, work=work, extra=("--plot", assets.genes[0], "--plot-dir", blocker))


def _plot_dir_foreign(work, assets):
    folder = work / "maps"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return _predict(assets, work=work, extra=("--plot", assets.genes[0], "--plot-dir", folder,
                                              "--overwrite"))


# ------------------------------------------------------------------ model files
def _model_missing(work, assets):
    return _predict(assets, work=work, model=work / "no_model")


def _config_missing(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "config.json").unlink()
    return _predict(assets, work=work, model=ckpt)


def _config_invalid_json(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "config.json").write_text("{ not json")
    return _predict(assets, work=work, model=ckpt)


def _config_other_architecture(work, assets):
    ckpt = _ckpt(work, assets)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(config))
    return _predict(assets, work=work, model=ckpt)


def _config_bad_field(work, assets):
    ckpt = _ckpt(work, assets)
    config = json.loads((ckpt / "config.json").read_text())
    config["retrieval_weighting"] = "median"
    (ckpt / "config.json").write_text(json.dumps(config))
    return _predict(assets, work=work, model=ckpt)


def _weights_missing(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "model.safetensors").unlink()
    return _predict(assets, work=work, model=ckpt)


def _weights_corrupt(work, assets):
    ckpt = _ckpt(work, assets)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return _predict(assets, work=work, model=ckpt)


def _bank_missing(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "spot_bank.safetensors").unlink()
    return _predict(assets, work=work, model=ckpt)


def _bank_corrupt(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "spot_bank.safetensors").write_bytes(b"\x00" * 64)
    return _predict(assets, work=work, model=ckpt)


def _hub_id_offline(work, assets):
    return _predict(assets, work=work, model="someorg/not-downloaded-model")


# ------------------------------------------------------------------ images
def _image_missing(work, assets):
    return _predict(assets, work=work, image=work / "missing.jpg")


def _image_truncated(work, assets):
    image = work / "slide.jpg"
    data = assets.image.read_bytes()
    image.write_bytes(data[: len(data) // 3])
    return _predict(assets, work=work, image=image)


def _image_bomb(work, assets):
    image = work / "bomb.png"
    _png_header_only(image, 25_000, 25_000)
    return _predict(assets, work=work, image=image)


def _image_bomb_limited(work, assets):
    image = work / "bomb.png"
    _png_header_only(image, 100_000, 100_000)
    return _predict(assets, work=work, image=image)


def _image_cmyk(work, assets):
    image = work / "slide.tif"
    Image.open(assets.image).convert("CMYK").save(image)
    return _predict(assets, work=work, image=image)


def _image_float(work, assets):
    image = work / "slide.tif"
    grey = np.asarray(Image.open(assets.image).convert("L"), dtype=np.float32) / 255.0
    Image.fromarray(grey, mode="F").save(image)
    return _predict(assets, work=work, image=image)


def _check_prediction(work: Path, assets) -> None:
    import anndata as ad

    adata = ad.read_h5ad(work / "pred.h5ad")
    assert adata.n_obs == len(pd.read_csv(assets.spots_csv)) and np.isfinite(adata.X).all()


# ------------------------------------------------------------------ spots
def _spots_empty(work, assets):
    spots = work / "spots.csv"
    spots.write_bytes(b"")
    return _predict(assets, work=work, spots=spots)


def _spots_binary(work, assets):
    spots = work / "spots.csv"
    spots.write_bytes(bytes(range(256)) * 4)
    return _predict(assets, work=work, spots=spots)


def _spots_non_numeric(work, assets):
    table = pd.read_csv(assets.spots_csv)
    table["pixel_x"] = table["pixel_x"].astype(object)
    table.loc[2, "pixel_x"] = "left"
    spots = work / "spots.csv"
    table.to_csv(spots, index=False)
    return _predict(assets, work=work, spots=spots)


def _spots_no_columns(work, assets):
    spots = work / "spots.csv"
    pd.read_csv(assets.spots_csv).rename(columns={"pixel_x": "x"}).to_csv(spots, index=False)
    return _predict(assets, work=work, spots=spots)


def _spots_outside(work, assets):
    table = pd.read_csv(assets.spots_csv)
    table.loc[0, "pixel_x"] = 1e6
    spots = work / "spots.csv"
    table.to_csv(spots, index=False)
    return _predict(assets, work=work, spots=spots)


def _spots_duplicate_ids(work, assets):
    table = pd.read_csv(assets.spots_csv)
    table.loc[1, "spot_id"] = table.loc[0, "spot_id"]
    spots = work / "spots.csv"
    table.to_csv(spots, index=False)
    return _predict(assets, work=work, spots=spots)


def _spots_header_only(work, assets):
    spots = work / "spots.csv"
    spots.write_text("spot_id,pixel_x,pixel_y\n")
    return _predict(assets, work=work, spots=spots)


# ------------------------------------------------------------------ options
def _k_zero(work, assets):
    return _predict(assets, work=work, extra=("--k", "0"))


def _k_too_large(work, assets):
    return _predict(assets, work=work, extra=("--k", "100000"))


def _tile_pitch_zero(work, assets):
    return _predict(assets, work=work, spots="tile", extra=("--tile-pitch", "0"))


def _batch_size_zero(work, assets):
    return _predict(assets, work=work, extra=("--batch-size", "0"))


def _device_cuda(work, assets):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        return _predict(assets, work=work, extra=("--device", "cuda:99"))
    return _predict(assets, work=work, extra=("--device", "cuda"))


# ------------------------------------------------------------------ --observed
def _observed_missing(work, assets):
    return _predict(assets, work=work, extra=("--observed", work / "nope.tsv.gz"))


def _observed_empty(work, assets):
    observed = work / "B1.tsv"
    observed.write_bytes(b"")
    return _predict(assets, work=work, extra=("--observed", observed))


def _observed_normalised(work, assets):
    with gzip.open(assets.counts, "rt") as handle:
        table = pd.read_csv(handle, sep="\t", index_col=0)
    normalised = np.log1p(table.div(table.sum(1).replace(0, 1), axis=0) * 1e4)
    observed = work / "B1_lognorm.tsv"
    normalised.to_csv(observed, sep="\t")
    return _predict(assets, work=work, extra=("--observed", observed))


def _observed_wrong_genes(work, assets):
    with gzip.open(assets.counts, "rt") as handle:
        table = pd.read_csv(handle, sep="\t", index_col=0)
    table.columns = [f"X{i}" for i in range(table.shape[1])]
    observed = work / "B1_renamed.tsv"
    table.to_csv(observed, sep="\t")
    return _predict(assets, work=work, extra=("--observed", observed))


CASES = [
    Case("predict-out-is-image", "predict", "overwrite",
         "`--out` = the input image, with --overwrite", _out_is_image,
         ("slide.jpg", ".h5ad")),
    Case("predict-out-foreign", "predict", "overwrite",
         "`--out` = an existing .h5ad not written by mclstexp, with --overwrite",
         _out_foreign_h5ad, ("pred.h5ad", "not a prediction file written by mclstexp")),
    Case("predict-out-exists", "predict", "overwrite", "`--out` exists, no --overwrite",
         _out_exists, ("already exists",)),
    Case("predict-out-suffix", "predict", "messages", "`--out` not ending in .h5ad",
         _out_wrong_suffix, ("pred.csv", ".h5ad")),
    Case("predict-plot-unknown-gene", "predict", "messages", "--plot gene not in the panel",
         _plot_unknown_gene, ("NOT_A_GENE",)),
    Case("predict-plot-dir-blocked", "predict", "interrupts",
         "--plot-dir is a file: no .h5ad and no half-written maps remain", _plot_dir_is_file,
         ("maps",)),
    Case("predict-plot-dir-foreign", "predict", "overwrite",
         "--plot-dir = a foreign folder, with --overwrite", _plot_dir_foreign,
         ("maps", "not a gene-map folder written by mclstexp")),
    Case("predict-model-missing", "predict", "files", "--model folder absent", _model_missing,
         ("no_model",)),
    Case("predict-config-missing", "predict", "files", "checkpoint without config.json",
         _config_missing, ("config.json",)),
    Case("predict-config-invalid", "predict", "files", "config.json is not JSON",
         _config_invalid_json, ("config.json",)),
    Case("predict-config-other-model", "predict", "absurd",
         "config.json of another architecture (model_type bert)", _config_other_architecture,
         ("model_type", "bert")),
    Case("predict-config-bad-field", "predict", "files",
         "config.json with an unknown retrieval_weighting", _config_bad_field,
         ("retrieval_weighting",)),
    Case("predict-weights-missing", "predict", "files", "checkpoint without model.safetensors",
         _weights_missing, ("model.safetensors",)),
    Case("predict-weights-corrupt", "predict", "files", "truncated model.safetensors",
         _weights_corrupt, ("model.safetensors",)),
    Case("predict-bank-missing", "predict", "files", "checkpoint without spot_bank.safetensors",
         _bank_missing, ("spot bank",)),
    Case("predict-bank-corrupt", "predict", "files", "corrupt spot_bank.safetensors",
         _bank_corrupt, ("spot_bank.safetensors",)),
    Case("predict-hub-offline", "predict", "files", "a Hub id that cannot be reached offline",
         _hub_id_offline, ("someorg/not-downloaded-model",),
         env={"HF_HUB_OFFLINE": "1"}),
    Case("predict-image-missing", "predict", "files", "--image absent", _image_missing,
         ("missing.jpg",)),
    Case("predict-image-truncated", "predict", "decode", "truncated JPEG slide",
         _image_truncated, ("slide.jpg", "truncated")),
    Case("predict-image-bomb-25k", "predict", "decode",
         "3.7 kB PNG declaring 25,000 × 25,000 px (once: 5.3 GB and a black slide, exit 0)",
         _image_bomb, ("bomb.png", "decode limit"), subprocess=True, address_space_gib=6.0),
    Case("predict-image-bomb-100k", "predict", "decode",
         "58 kB-class PNG header declaring 100,000² px (once: OOM-killed at 23 GB)",
         _image_bomb_limited, ("bomb.png", "decode limit"), subprocess=True,
         address_space_gib=6.0),
    Case("predict-image-cmyk", "predict", "modes", "CMYK TIFF slide", _image_cmyk, code=0,
         leaves=("pred.h5ad",), check=_check_prediction, verdict="converted correctly"),
    Case("predict-image-float", "predict", "modes", "32-bit float greyscale TIFF in [0, 1]",
         _image_float, code=0, leaves=("pred.h5ad",), check=_check_prediction,
         verdict="converted correctly"),
    Case("predict-spots-empty", "predict", "messages", "0-byte spots CSV", _spots_empty,
         ("spots.csv",)),
    Case("predict-spots-binary", "predict", "messages", "binary spots CSV", _spots_binary,
         ("spots.csv",)),
    Case("predict-spots-non-numeric", "predict", "messages", "non-numeric pixel_x",
         _spots_non_numeric, ("spots.csv", "pixel_x")),
    Case("predict-spots-no-columns", "predict", "messages", "spots CSV without pixel_x",
         _spots_no_columns, ("spots.csv", "pixel_x")),
    Case("predict-spots-outside", "predict", "silent", "a spot centre outside the image",
         _spots_outside, ("outside",)),
    Case("predict-spots-duplicate", "predict", "silent", "duplicate spot ids",
         _spots_duplicate_ids, ("duplicate",)),
    Case("predict-spots-header-only", "predict", "messages", "spots CSV with a header only",
         _spots_header_only, ("spots.csv", "no rows")),
    Case("predict-k-zero", "predict", "zero", "--k 0", _k_zero, ("k",)),
    Case("predict-k-too-large", "predict", "absurd", "--k larger than the bank",
         _k_too_large, ("larger than the spot bank",)),
    Case("predict-tile-pitch-zero", "predict", "zero", "--tile-pitch 0", _tile_pitch_zero,
         ("--tile-pitch",)),
    Case("predict-batch-size-zero", "predict", "zero", "--batch-size 0", _batch_size_zero,
         ("batch-size",)),
    Case("predict-device-cuda", "predict", "messages", "--device cuda without a GPU",
         _device_cuda, ("cuda",)),
    Case("predict-observed-missing", "predict", "files", "--observed file absent",
         _observed_missing, ("nope.tsv.gz",)),
    Case("predict-observed-empty", "predict", "messages", "0-byte --observed file",
         _observed_empty, ("B1.tsv",)),
    Case("predict-observed-normalised", "predict", "counts",
         "--observed holds log-normalised values, not counts", _observed_normalised,
         ("B1_lognorm.tsv", "raw counts")),
    Case("predict-observed-wrong-genes", "predict", "messages",
         "--observed without the model's genes", _observed_wrong_genes,
         ("B1_renamed.tsv", "genes")),
]
