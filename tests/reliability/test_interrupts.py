"""SIGINT / SIGTERM in the middle of a command: one line, exit 130 / 143, nothing left behind.

Each command runs in a child process on a workload large enough to be caught mid-way; the
signal is sent once the child shows it is working (its staging folder exists, or its progress
bar has started), never after a fixed delay. The contract: the output is absent (no
`.partial-*`, no half-written maps folder, no staging folder), the inputs are intact, and the
last stderr line says the command was interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import assets_snapshot, snapshot

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _wait_then_signal(argv: list[str], ready, sig: int, timeout: float = 300.0):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A foreground Ctrl-C: the child gets the default SIGINT disposition even when the test run
    # itself was started in the background (`cmd &` ignores SIGINT, and children inherit that).
    proc = subprocess.Popen([sys.executable, "-m", "mclstexp_hub.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err_lines: list[str] = []
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + timeout
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            err_lines.append(chunk.decode(errors="replace"))
        if ready("".join(err_lines)):
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.02)
    out, rest = proc.communicate(timeout=timeout)
    err = "".join(err_lines) + rest.decode(errors="replace")
    assert sent, f"the command finished before it could be interrupted: {err[-500:]}"
    return proc.returncode, err


def _partial_in(folder: Path):
    return lambda _err: any(".partial-" in p.name or ".staging-" in p.name
                            for p in folder.iterdir())


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory):
    """A larger synthetic HER2+ tree (2 × ~250 spots) so a build takes a few seconds."""
    from mclstexp_hub.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("big_raw")
    return generate_synthetic_dataset(root / "synthetic", sections=("A1", "B1"), n_rows=18,
                                      n_cols=18, seed=5)


def _assert_clean(work: Path, before: dict, err: str, code: int, sig: int) -> None:
    assert code == EXIT[sig], err[-800:]
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    assert "interrupted" in last and ("SIGINT" if sig == signal.SIGINT else "SIGTERM") in last
    assert "Traceback" not in err
    assert snapshot(work) == before, "outputs or partial files were left behind"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_data_build_leaves_nothing(big_raw, tmp_path, sig):
    work = tmp_path / "work"
    work.mkdir()
    raw_before = assets_snapshot(big_raw.root)
    before = snapshot(work)
    argv = ["data", "build", "her2st", "--data-dir", big_raw.data_dir, "--out", work / "ds",
            "--genes", big_raw.genes_file, "--patch-size", 224, "--quiet"]
    code, err = _wait_then_signal(argv, _partial_in(work), sig)
    _assert_clean(work, before, err, code, sig)
    assert assets_snapshot(big_raw.root) == raw_before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_predict_leaves_nothing(assets, tmp_path, sig):
    work = tmp_path / "work"
    work.mkdir()
    shared = assets_snapshot(assets.root)
    before = snapshot(work)
    # a dense tile grid: thousands of patches, so the model is caught mid-way
    argv = ["predict", "--model", assets.checkpoint, "--image", assets.image, "--tile",
            "--tile-pitch", 6, "--min-tissue-fraction", 0.01, "--out", work / "pred.h5ad",
            "--plot", assets.genes[0], "--device", "cpu"]
    code, err = _wait_then_signal(argv, lambda e: "predict:" in e and "spot" in e, sig)
    _assert_clean(work, before, err, code, sig)
    assert assets_snapshot(assets.root) == shared


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_train_leaves_nothing_and_reruns(assets, tmp_path, sig):
    """Signalled once its --out folder exists (training has started): no checkpoint, no
    checkpoints/ state and no staging folder remain, and the same command then succeeds."""
    work = tmp_path / "work"
    work.mkdir()
    shared = assets_snapshot(assets.root)
    before = snapshot(work)
    argv = ["train", "--dataset", assets.dataset, "--out", work / "ck", "--preset", "her2st",
            "--profile", "cpu", "--image-encoder", "resnet10t", "--epochs", 40]
    for _attempt in range(3):
        code, err = _wait_then_signal(argv, lambda _err: (work / "ck").exists(), sig)
        if code != 0:
            break
        # Exit 0: the run's last seconds (training, bank, save) were over before the signal was
        # handled — seen once on a loaded CI machine; local probes at 0-7 s after --out appears
        # gave exit 0 only for signals landing after the final save. That proves nothing about
        # an interrupt mid-run, so the completed output is cleared and the run repeated.
        shutil.rmtree(work / "ck")
    _assert_clean(work, before, err, code, sig)
    assert assets_snapshot(assets.root) == shared
    rerun = subprocess.run([sys.executable, "-m", "mclstexp_hub.cli", *map(str, argv), "--quiet"],
                           capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-800:]
    assert (work / "ck" / "config.json").is_file() and not (work / "ck" / "checkpoints").exists()
