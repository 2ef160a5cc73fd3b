"""Bad patch-dataset folders, loaded by `mclstexp bank build CKPT --dataset DIR --out X`.

Each case copies the shared dataset (built from synthetic data, genes = the checkpoint's) into
its work folder and damages one thing the loader must verify: the metadata JSON, the shard
paths it names, the shards themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from .harness import Case

META = "mclstexp_dataset.json"


def _bank(dataset: Path, work: Path, assets) -> list[str]:
    return ["bank", "build", assets.checkpoint, "--dataset", dataset, "--out",
            work / "bank.safetensors", "--quiet"]


def _copy(work: Path, assets) -> Path:
    return assets.copy("dataset", work)


def _edit_meta(work: Path, assets, edit) -> list[str]:
    dataset = _copy(work, assets)
    path = dataset / META
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))
    return _bank(dataset, work, assets)


def _shard(dataset: Path, section: str = "B1") -> Path:
    return dataset / json.loads((dataset / META).read_text())["shards"][section]


def _ok(work, assets):
    return _bank(_copy(work, assets), work, assets)


def _meta_corrupt(work, assets):
    dataset = _copy(work, assets)
    path = dataset / META
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    return _bank(dataset, work, assets)


def _meta_binary(work, assets):
    dataset = _copy(work, assets)
    (dataset / META).write_bytes(b"\xff\xfe\x00\x01" * 16)
    return _bank(dataset, work, assets)


def _meta_not_object(work, assets):
    dataset = _copy(work, assets)
    (dataset / META).write_text("[1, 2, 3]\n")
    return _bank(dataset, work, assets)


def _meta_missing_field(work, assets):
    return _edit_meta(work, assets, lambda m: m.pop("gene_names"))


def _shard_parent(work, assets):
    (work / "x.parquet").write_bytes(b"outside the dataset")

    def edit(meta):
        meta["shards"]["B1"] = "../x.parquet"

    return _edit_meta(work, assets, edit)


def _shard_absolute(work, assets):
    outside = work / "abs.parquet"
    outside.write_bytes(b"outside the dataset")

    def edit(meta):
        meta["shards"]["B1"] = str(outside)

    return _edit_meta(work, assets, edit)


def _section_without_shard(work, assets):
    return _edit_meta(work, assets, lambda m: m["shards"].pop("B1"))


def _shard_missing(work, assets):
    dataset = _copy(work, assets)
    _shard(dataset).unlink()
    return _bank(dataset, work, assets)


def _shard_not_parquet(work, assets):
    dataset = _copy(work, assets)
    _shard(dataset).write_bytes(b"PAR1 but not really a parquet file" * 10)
    return _bank(dataset, work, assets)


def _shard_rows_edited(work, assets):
    dataset = _copy(work, assets)
    shard = _shard(dataset)
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 3), shard)  # 3 rows removed by hand
    return _bank(dataset, work, assets)


def _shard_swapped(work, assets):
    """B1's shard replaced by A1's: the rows belong to another section."""
    dataset = _copy(work, assets)
    _shard(dataset, "B1").write_bytes(_shard(dataset, "A1").read_bytes())

    def edit(meta):
        meta["n_spots"]["B1"] = meta["n_spots"]["A1"]

    path = dataset / META
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))
    return _bank(dataset, work, assets)


def _dataset_missing(work, assets):
    return _bank(work / "no_such_dataset", work, assets)


def _check_bank(work: Path, assets) -> None:
    from mclstexp_hub.outputs import is_spot_bank_file

    assert is_spot_bank_file(work / "bank.safetensors")


CASES = [
    Case("dataset-ok", "bank", "cache", "an intact copy of the dataset gives a bank (control)",
         _ok, code=0, leaves=("bank.safetensors",), check=_check_bank, verdict="used as given"),
    Case("dataset-meta-corrupt-json", "bank", "messages", "mclstexp_dataset.json cut in half",
         _meta_corrupt, (META, "json")),
    Case("dataset-meta-binary", "bank", "messages", "mclstexp_dataset.json of binary bytes",
         _meta_binary, (META,)),
    Case("dataset-meta-not-object", "bank", "messages", "metadata JSON that is a list",
         _meta_not_object, (META, "object")),
    Case("dataset-meta-missing-field", "bank", "messages", "metadata without gene_names",
         _meta_missing_field, (META, "gene_names")),
    Case("dataset-shard-path-parent", "bank", "paths", "shard path '../x.parquet' in the metadata",
         _shard_parent, ("../x.parquet", "inside")),
    Case("dataset-shard-path-absolute", "bank", "paths", "absolute shard path in the metadata",
         _shard_absolute, ("abs.parquet", "absolute")),
    Case("dataset-section-without-shard", "bank", "messages",
         "a listed section with no entry in 'shards'", _section_without_shard, (META, "B1")),
    Case("dataset-shard-missing", "bank", "messages", "a shard file deleted", _shard_missing,
         (".parquet", "missing")),
    Case("dataset-shard-not-parquet", "bank", "decode", "a shard that is not parquet",
         _shard_not_parquet, (".parquet", "parquet shard")),
    Case("dataset-shard-rows-edited", "bank", "cache", "a shard with rows removed by hand",
         _shard_rows_edited, (".parquet", "rows", "metadata")),
    Case("dataset-shard-swapped", "bank", "cache", "B1's shard replaced by A1's rows",
         _shard_swapped, (".parquet", "A1", "B1")),
    Case("dataset-missing", "bank", "messages", "--dataset names no folder", _dataset_missing,
         ("no_such_dataset",)),
]
