"""Bad inputs to `mclstexp train` (the synthetic dataset: 56 spots of A1 + B1, resnet10t)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .harness import Case

META = "mclstexp_dataset.json"
N_SPOTS = 56  # A1 + B1 of the synthetic dataset = the bank a training run builds


def _train(dataset, out, *extra) -> list[str]:
    return ["train", "--dataset", dataset, "--out", out, "--preset", "her2st", "--profile",
            "cpu", "--image-encoder", "resnet10t", "--epochs", "1", "--quiet", *extra]


def _info(work: Path) -> dict:
    return json.loads((work / "ck" / "training_info.json").read_text())


def _config(work: Path) -> dict:
    return json.loads((work / "ck" / "config.json").read_text())


# ------------------------------------------------------------------ outputs vs inputs
def _out_is_dataset(work, assets):
    dataset = assets.copy("dataset", work)
    return _train(dataset, dataset, "--resume")


def _out_is_ancestor(work, assets):
    holder = work / "data"
    holder.mkdir()
    dataset = assets.copy("dataset", holder)
    return _train(dataset, holder, "--resume")


def _out_foreign_resume(work, assets):
    folder = work / "ck"
    folder.mkdir()
    (folder / "notes.txt").write_text("someone else's")
    return _train(assets.dataset, folder, "--resume")


def _out_not_empty(work, assets):
    folder = work / "ck"
    folder.mkdir()
    (folder / "notes.txt").write_text("someone else's")
    return _train(assets.dataset, folder)


def _out_is_file(work, assets):
    target = work / "ck"
    target.write_text("a file")
    return _train(assets.dataset, target)


# ------------------------------------------------------------------ retrieval k
def _k_from_preset(work, assets):
    return _train(assets.dataset, work / "ck")


def _check_k_clamped(work, assets):
    info = _info(work)
    assert _config(work)["retrieval_k"] == N_SPOTS == info["retrieval_k"]
    assert any("retrieval_k" in w and "200" in w for w in info["warnings"]), info["warnings"]


def _k_explicit_too_large(work, assets):
    return _train(assets.dataset, work / "ck", "--retrieval-k", "500")


def _k_explicit_used(work, assets):
    return _train(assets.dataset, work / "ck", "--retrieval-k", "5")


def _check_k_used(work, assets):
    assert _config(work)["retrieval_k"] == 5 and _info(work)["warnings"] == []


# ------------------------------------------------------------------ explicit numbers
def _zero(option):
    return lambda work, assets: _train(assets.dataset, work / "ck", option, "0")


def _seed_and_decay_zero(work, assets):
    return _train(assets.dataset, work / "ck", "--seed", "0", "--weight-decay", "0",
                  "--feature-views", "0", "--no-freeze-image-encoder")


def _check_zeros_used(work, assets):
    profile = _info(work)["profile"]
    assert profile["seed"] == 0 and profile["weight_decay"] == 0.0
    assert profile["n_feature_views"] == 0 and profile["freeze_image_encoder"] is False


def _seed_used(work, assets):
    return _train(assets.dataset, work / "ck", "--seed", "7")


def _check_seed(work, assets):
    assert _info(work)["profile"]["seed"] == 7


def _max_position_too_small(work, assets):
    return _train(assets.dataset, work / "ck", "--max-position", "2")


def _empty_encoder_weights(work, assets):
    return _train(assets.dataset, work / "ck", "--pretrained-encoder", "")


# ------------------------------------------------------------------ absurd data
def _huge_coordinates(work, assets):
    dataset = assets.copy("dataset", work)
    shard = dataset / json.loads((dataset / META).read_text())["shards"]["B1"]
    table = pq.read_table(shard)
    n = table.num_rows
    huge = pa.FixedSizeListArray.from_arrays(pa.array([1_000_000] * (2 * n), pa.int32()), 2)
    table = table.set_column(table.column_names.index("position"), "position", huge)
    pq.write_table(table, shard)
    return _train(dataset, work / "ck")


def _other_preset(work, assets):
    return ["train", "--dataset", assets.dataset, "--out", work / "ck", "--quiet"]


# ------------------------------------------------------------------ damaged dataset
def _meta_corrupt(work, assets):
    dataset = assets.copy("dataset", work)
    (dataset / META).write_text("{ cut")
    return _train(dataset, work / "ck")


def _shard_missing(work, assets):
    dataset = assets.copy("dataset", work)
    (dataset / json.loads((dataset / META).read_text())["shards"]["A1"]).unlink()
    return _train(dataset, work / "ck")


def _dataset_missing(work, assets):
    return _train(work / "no_such_dataset", work / "ck")


def _unknown_section(work, assets):
    return _train(assets.dataset, work / "ck", "--train-sections", "Z9")


CASES = [
    Case("train-out-is-dataset", "train", "overwrite", "--out = the dataset folder (--resume)",
         _out_is_dataset, ("input",)),
    Case("train-out-is-ancestor", "train", "overwrite",
         "--out = a folder holding the dataset (--resume)", _out_is_ancestor, ("contains",)),
    Case("train-out-foreign-resume", "train", "overwrite",
         "--resume into a folder of foreign files", _out_foreign_resume, ("ck", "--resume")),
    Case("train-out-not-empty", "train", "overwrite", "--out a non-empty foreign folder",
         _out_not_empty, ("not empty",)),
    Case("train-out-is-file", "train", "overwrite", "--out names an existing file",
         _out_is_file, ("is a file",)),
    Case("train-k-preset-clamped", "train", "modes",
         "preset k=200 > 56 training spots: clamped to the bank, warning recorded",
         _k_from_preset, code=0, leaves=("ck",), check=_check_k_clamped,
         verdict="converted correctly"),
    Case("train-k-explicit-too-large", "train", "modes", "--retrieval-k 500 > 56 training spots",
         _k_explicit_too_large, ("--retrieval-k", "56")),
    Case("train-k-explicit-used", "train", "modes", "--retrieval-k 5 is used as given",
         _k_explicit_used, code=0, leaves=("ck",), check=_check_k_used, verdict="used as given"),
    Case("train-retrieval-k-zero", "train", "zeros", "--retrieval-k 0", _zero("--retrieval-k"),
         ("--retrieval-k",)),
    Case("train-epochs-zero", "train", "zeros", "--epochs 0", _zero("--epochs"), ("--epochs",)),
    Case("train-micro-batch-zero", "train", "zeros", "--micro-batch 0", _zero("--micro-batch"),
         ("--micro-batch",)),
    Case("train-batch-size-zero", "train", "zeros", "--batch-size 0", _zero("--batch-size"),
         ("--batch-size",)),
    Case("train-lr-zero", "train", "zeros", "--lr 0", _zero("--lr"), ("--lr",)),
    Case("train-encoder-input-size-zero", "train", "zeros", "--encoder-input-size 0",
         _zero("--encoder-input-size"), ("--encoder-input-size",)),
    Case("train-max-position-zero", "train", "zeros", "--max-position 0",
         _zero("--max-position"), ("--max-position",)),
    Case("train-zeros-used", "train", "zeros",
         "--seed 0 --weight-decay 0 --feature-views 0 are used, not defaulted",
         _seed_and_decay_zero, code=0, leaves=("ck",), check=_check_zeros_used,
         verdict="used as given"),
    Case("train-seed-used", "train", "zeros", "--seed 7 is recorded", _seed_used, code=0,
         leaves=("ck",), check=_check_seed, verdict="used as given"),
    Case("train-max-position-too-small", "train", "absurd",
         "--max-position 2 below the data's coordinates", _max_position_too_small,
         ("--max-position 2", "coordinates")),
    Case("train-huge-coordinates", "train", "absurd",
         "array coordinates of 1e6 (pixels, not grid indices)", _huge_coordinates,
         ("1,000,000", "max_position")),
    Case("train-empty-encoder-weights", "train", "zeros", "--pretrained-encoder ''",
         _empty_encoder_weights, ("--pretrained-encoder",)),
    Case("train-no-preset", "train", "messages", "a dataset whose config has no preset",
         _other_preset, ("--preset",)),
    Case("train-meta-corrupt", "train", "decode", "mclstexp_dataset.json cut", _meta_corrupt,
         (META,)),
    Case("train-shard-missing", "train", "messages", "a shard deleted", _shard_missing,
         ("A1.parquet",)),
    Case("train-dataset-missing", "train", "messages", "--dataset names no folder",
         _dataset_missing, ("no_such_dataset",)),
    Case("train-unknown-section", "train", "messages", "--train-sections Z9", _unknown_section,
         ("Z9",)),
]
