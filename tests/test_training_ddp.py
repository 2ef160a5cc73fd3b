"""Multi-process training: the unchanged `train_model` under `torchrun` with 2 CPU processes.

The test launches this file as the worker: `python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/test_training_ddp.py`. Each rank trains two steps end to end (image
encoder included) on real HER2+ patches with the gloo backend and writes a hash of its weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATASET_ENV = "MCLSTEXP_DDP_TEST_DATASET"
OUT_ENV = "MCLSTEXP_DDP_TEST_OUT"


@pytest.mark.slow
def test_two_cpu_processes_train_in_lockstep(tmp_path):
    from test_training_helpers import tiny_her2st_dataset

    _, folder, _ = tiny_her2st_dataset(None)
    env = {
        **os.environ,
        DATASET_ENV: str(folder),
        OUT_ENV: str(tmp_path),
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        __file__,
    ]
    proc = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["steps"] == 2 for r in ranks)
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # every weight agrees
    assert ranks[0]["bank"] == ranks[1]["bank"]
    assert ranks[0]["parameters"] != ranks[0]["initial_parameters"]  # and training moved them
    assert ranks[0]["initial_parameters"] == ranks[1]["initial_parameters"]


def _worker() -> None:
    import hashlib

    from test_training_helpers import SMALL_ENCODER, state_hash
    from transformers import set_seed

    from mclstexp_hub import MclSTExpModel
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.training.trainer import train_model

    folder = os.environ[DATASET_ENV]
    meta = load_dataset_metadata(folder)
    dataset = load_st_dataset(folder).select(range(16))
    result = train_model(
        dataset,
        meta["gene_names"],
        None,
        config_overrides={"image_encoder": SMALL_ENCODER, "retrieval_k": 8},
        profile="paper",
        batch_size=4,
        learning_rate=1e-3,
        max_steps=2,
        dataset_metadata=meta,
        progress=False,
    )
    set_seed(0)
    initial = MclSTExpModel(result.model.config)
    report = {
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "steps": max(h["step"] for h in result.history),
        "parameters": state_hash(result.model, parameters_only=True),
        "initial_parameters": state_hash(initial, parameters_only=True),
        "bank": hashlib.sha256(result.model.spot_bank.embeddings.numpy().tobytes()).hexdigest(),
    }
    path = Path(os.environ[OUT_ENV]) / f"rank{report['rank']}.json"
    path.write_text(json.dumps(report))


if __name__ == "__main__":
    _worker()
