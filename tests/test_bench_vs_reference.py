"""benchmarks/bench_vs_reference.py: its pure helpers on tiny inputs (no reference repo needed),
plus a --quick smoke run against the authors' code when MCLSTEXP_REFERENCE_REPO names a checkout."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_vs_reference.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driver_is_valid_python_and_patches_the_download(bench, tmp_path):
    path = bench.write_reference_driver(tmp_path)
    source = path.read_text()
    ast.parse(source)
    assert "weights=None" in source and "from model import mclSTExp_Attention" in source
    # the driver lives in the temp dir, never in the repository
    assert tmp_path in path.parents
    cmd = bench.reference_command(path, {"mode": "tower", "batch": 2}, tmp_path, "t")
    assert cmd[1] == str(path)
    assert json.loads(Path(cmd[2]).read_text())["mode"] == "tower"


def test_grid_centres_reaches_the_target_inside_the_box(bench):
    xs, ys = np.array([1000.0, 3000.0]), np.array([500.0, 2500.0])
    centres, pitch = bench.grid_centres(xs, ys, 2000)
    assert len(centres) >= 2000 and pitch >= 1
    assert centres[:, 0].min() >= 1000 and centres[:, 0].max() <= 3000
    assert centres[:, 1].min() >= 500 and centres[:, 1].max() <= 2500


def test_fit_batch_halves_until_it_fits(bench):
    assert bench.fit_batch(20.0, 128, None) == 128
    assert bench.fit_batch(20.0, 128, 40.0) == 128
    assert bench.fit_batch(20.0, 128, 12.0) == 64
    assert bench.fit_batch(20.0, 128, 0.1) == 8


def test_ratio_table(bench):
    results = {
        "tower": {"theirs": [{"patches_s": 10.0}, {"patches_s": 12.0}, {"patches_s": 11.0}],
                  "ours_fp32": [{"patches_s": 22.0}],
                  "ours_bf16_cl": [{"error": "boom"}]},
        "predict": {"theirs": [{"spots_s": 4.0, "wall_s": 50.0, "peak_gib": 2.0}],
                    "ours_fp32": [{"spots_s": 8.0, "wall_s": 25.0, "peak_gib": 1.0}]},
        "train": {"theirs": [{"spots_s": 1.0, "peak_gib": 20.0, "batch": 128}],
                  "ours_fp32": [{"spots_s": 1.5, "peak_gib": 18.0, "batch": 128}]},
    }
    rows = bench.ratio_rows(results)
    tower = [r for r in rows if r["part"] == "tower"]
    assert len(tower) == 1 and tower[0]["config"] == "ours_fp32"
    assert tower[0]["theirs"] == 11.0 and tower[0]["ratio"] == pytest.approx(2.0)
    wall = next(r for r in rows if r["part"] == "predict" and r["metric"] == "wall s")
    assert wall["ratio"] == pytest.approx(0.5) and wall["better"] == "lower"
    table = bench.format_table(rows)
    assert table.splitlines()[0].startswith("| part |")
    assert "2.00x" in table and "(batch 128)" in table
    assert len(table.splitlines()) == 2 + len(rows)


def test_summarise_median(bench):
    assert bench.summarise([3.0, 1.0, 2.0])["median"] == 2.0
    assert bench.summarise([1.0, 2.0])["median"] == 1.5
    assert bench.summarise([None])["n"] == 0


@pytest.mark.slow
def test_quick_run_against_the_reference(tmp_path):
    repo = os.environ.get("MCLSTEXP_REFERENCE_REPO")
    if not repo or not (Path(repo) / "model.py").is_file():
        pytest.skip("set MCLSTEXP_REFERENCE_REPO to a checkout of github.com/ZhicengShi/mclSTExp "
                    "(e.g. git --git-dir=... archive HEAD | tar -x -C /tmp/mclstexp_ref)")
    data = ROOT.parent / "shared" / "data" / "her2st"
    if not (data / "ST-cnts").is_dir():
        pytest.skip(f"{data} not found: the smoke run needs the shared HER2+ data")
    pytest.importorskip("einops", reason="the authors' model.py needs einops (pip install .[bench])")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reference-repo", repo, "--quick",
                           "--only", "tower,predict", "--out", str(out),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=1200, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["results"]["tower"]["theirs"] and payload["table"]
    agreement = payload["prediction_agreement"]["C4"]["ours_fp32"]
    assert agreement["max_abs_diff"] < 1e-2
