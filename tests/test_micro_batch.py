"""Micro-batched image tower (gradient cache): the whole-batch loss at a slice's memory.

Synthetic tensors and the synthetic dataset (tests/conftest.py `synthetic`): runs on every clone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import set_seed

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
from mclstexp_hub.training.micro_batch import micro_batched_backward
from mclstexp_hub.training.profiles import get_profile
from mclstexp_hub.training.torch_dataset import SpotPatchDataset
from mclstexp_hub.training.trainer import train_model

GENES = [f"g{i}" for i in range(12)]


def _model(dropout: float = 0.0) -> MclSTExpModel:
    torch.manual_seed(0)
    config = MclSTExpConfig(gene_names=GENES, image_encoder="resnet10t", patch_size=32,
                            max_position=64, dropout=dropout)
    return MclSTExpModel(config).train()


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, len(GENES), generator=g) * 3,
            torch.randint(0, 64, (n, 2), generator=g))


def _grads(model: MclSTExpModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _whole_batch_grads(model, pixels, expression, positions):
    loss = model(pixel_values=pixels, expression=expression, positions=positions).loss
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        scale = float(b[name].abs().max()) or 1.0  # float32 sums in another order
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m, name=name, scale=scale: f"{name} (max |grad| {scale:.3g}): {m}")


def test_gradients_equal_the_whole_batch_when_batchnorm_uses_running_statistics():
    pixels, expression, positions = _batch(8)
    whole, sliced = _model(), _model()
    whole.image_encoder.eval()  # BatchNorm from running statistics: slices change nothing
    sliced.image_encoder.eval()
    loss, ref = _whole_batch_grads(whole, pixels, expression, positions)
    got = micro_batched_backward(sliced, pixels, expression, positions, 3)
    torch.testing.assert_close(got, loss)
    _assert_same_grads(_grads(sliced), ref)


def test_one_slice_in_train_mode_replays_dropout_and_matches_the_plain_step():
    pixels, expression, positions = _batch(6)
    whole, sliced = _model(dropout=0.3), _model(dropout=0.3)
    torch.manual_seed(5)
    loss, ref = _whole_batch_grads(whole, pixels, expression, positions)
    after_plain = torch.rand(1)
    torch.manual_seed(5)
    got = micro_batched_backward(sliced, pixels, expression, positions, 6)
    torch.testing.assert_close(got, loss)
    _assert_same_grads(_grads(sliced), ref)  # the replayed pass drew the same dropout masks
    assert torch.equal(torch.rand(1), after_plain)  # and the step consumed the same randomness
    for (name, a), (_, b) in zip(whole.named_buffers(), sliced.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # running statistics updated once, not twice


def test_running_statistics_are_updated_once_per_slice():
    pixels, expression, positions = _batch(8)
    sliced, reference = _model(), _model()
    micro_batched_backward(sliced, pixels, expression, positions, 4)
    with torch.no_grad():
        for chunk in pixels.split(4):
            reference.image_encoder(chunk)  # train mode: one update per slice
    buffers = dict(reference.image_encoder.named_buffers())
    for name, value in sliced.image_encoder.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=name)


def test_micro_batch_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="positive integer"):
        micro_batched_backward(_model(), *_batch(4), 0)
    paper = get_profile("paper")
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="micro_batch.*positive integer"):
            paper.replace(micro_batch=bad)
    with pytest.raises(ValueError, match="exceeds the batch size 128"):
        paper.replace(micro_batch=129)
    for name in ("cpu", "cpu-ft"):
        with pytest.raises(ValueError, match="does not train the image tower from pixels"):
            get_profile(name).replace(micro_batch=8)


def test_training_with_micro_batches_trains_the_tower_and_records_it(synthetic, tmp_path):
    from mclstexp_hub.data.hf_dataset import load_st_dataset

    spots = SpotPatchDataset(load_st_dataset(synthetic.dataset))
    run = get_profile("cpu-e2e").replace(epochs=1, batch_size=16, encoder_input_size=32,
                                         micro_batch=4)
    result = train_model(spots, synthetic.genes, tmp_path / "ckpt", profile=run,
                         config_overrides={"image_encoder": "resnet10t", "retrieval_k": 8},
                         dataset_metadata=synthetic.metadata, progress=False)
    set_seed(run.seed)
    initial = MclSTExpModel(result.model.config)
    changed = [name for (name, a), (_, b) in zip(
        result.model.image_encoder.named_parameters(), initial.image_encoder.named_parameters(),
        strict=True) if not torch.equal(a, b)]
    assert changed, "the image tower's weights did not change"
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    info = json.loads((tmp_path / "ckpt" / "training_info.json").read_text())
    assert info["profile"]["micro_batch"] == 4


def test_micro_batch_under_several_processes_is_refused(synthetic, tmp_path, monkeypatch):
    from mclstexp_hub.data.hf_dataset import load_st_dataset

    monkeypatch.setenv("WORLD_SIZE", "2")
    run = get_profile("cpu-e2e").replace(epochs=1, batch_size=16, micro_batch=4)
    with pytest.raises(ValueError, match="--micro-batch runs in one process"):
        train_model(SpotPatchDataset(load_st_dataset(synthetic.dataset)), synthetic.genes,
                    tmp_path / "ckpt", profile=run, progress=False)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("args, message", [
    (["--micro-batch", "0"], "--micro-batch must be a positive integer; got 0"),
    (["--micro-batch", "8", "--profile", "cpu"], "does not train the image tower from pixels"),
])
def test_cli_refuses_a_bad_micro_batch_in_one_line(synthetic, tmp_path, args, message):
    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "mclstexp_hub.cli", "train", "--dataset", str(synthetic.dataset), "--out",
         str(out), "--preset", "her2st", "--profile", "paper", "--epochs", "1", *args],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_forward_passes_run_in_the_given_autocast_context():
    pixels, expression, positions = _batch(4)
    model = _model()
    dtypes = []
    hook = model.image_projection.register_forward_hook(lambda m, a, out: dtypes.append(a[0].dtype))
    loss = micro_batched_backward(model, pixels, expression, positions, 2,
                                  autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    hook.remove()
    assert dtypes == [torch.bfloat16] * 4  # two slices, each embedded twice
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
