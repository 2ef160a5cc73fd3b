"""Stale-cache class of the reliability issue: loading must return the folder's *current* rows.

`datasets`' folder loader keys its cache on the folder name, so two folders called alike, or a
folder rebuilt in place, could return the rows of the first load. `load_st_dataset` reads the
shards directly and verifies them against the metadata; these tests hold it to that.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mclstexp_hub.cli import main
from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset


def _build(assets, data_dir: Path, out: Path, sections: list[str], *extra: str) -> None:
    argv = ["data", "build", "her2st", "--data-dir", str(data_dir), "--out", str(out),
            "--sections", *sections, "--genes", str(assets.genes_file), "--patch-size",
            str(assets.patch_size), "--quiet", *extra]
    assert main(argv) == 0


def _rows(ds) -> list[tuple[str, str]]:
    return list(zip(ds["section"], ds["spot_id"], strict=True))


def test_same_name_folders_load_their_own_rows(assets, tmp_path):
    first, second = tmp_path / "one" / "ds", tmp_path / "two" / "ds"
    _build(assets, assets.data_dir, first, ["A1"])
    _build(assets, assets.data_dir, second, ["B1"])
    ds1 = load_st_dataset(first)
    ds2 = load_st_dataset(second)  # same folder name, different content
    assert set(ds1["section"]) == {"A1"} and set(ds2["section"]) == {"B1"}
    assert ds2.num_rows == load_dataset_metadata(second)["n_spots"]["B1"]
    assert ds1._fingerprint != ds2._fingerprint


def test_rebuilt_in_place_loads_the_new_rows(assets, tmp_path):
    out = tmp_path / "ds"
    _build(assets, assets.data_dir, out, ["A1", "B1"])
    before = load_st_dataset(out)
    assert set(before["section"]) == {"A1", "B1"}
    before_expr = np.array(before["expression"])

    data = tmp_path / "data"  # same sections and spots; B1's counts of every spot reversed
    shutil.copytree(assets.data_dir, data)
    counts = data / "ST-cnts" / "B1.tsv.gz"
    table = pd.read_csv(counts, sep="\t", index_col=0)
    table[:] = table.to_numpy()[:, ::-1]
    table.to_csv(counts, sep="\t", compression="gzip")
    _build(assets, data, out, ["A1", "B1"], "--overwrite")
    after = load_st_dataset(out)
    assert _rows(after) == _rows(before)  # same rows, so only the content tells them apart
    assert not np.array_equal(np.array(after["expression"]), before_expr)
    reference = tmp_path / "fresh" / "ds"
    _build(assets, data, reference, ["A1", "B1"])
    np.testing.assert_array_equal(
        np.array(after["expression"]), np.array(load_st_dataset(reference)["expression"])
    )
    assert after._fingerprint != before._fingerprint

    _build(assets, assets.data_dir, out, ["B1"], "--overwrite")  # fewer sections in place
    fewer = load_st_dataset(out)
    assert set(fewer["section"]) == {"B1"}
    assert fewer.num_rows == load_dataset_metadata(out)["n_spots"]["B1"]
