"""The image tower under ONNX Runtime: same predictions as PyTorch, never a stale export.

Synthetic checkpoint (resnet10t) from tests/conftest.py, so these run on every clone.
"""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.cli import main
from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import (
    ONNX_TOWER_FILENAME,
    ONNX_TOWER_INFO_FILENAME,
    attach_onnx_tower,
    load_onnx_tower,
)


def test_export_agrees_with_torch_and_records_its_source(exported):
    info = json.loads((exported / ONNX_TOWER_INFO_FILENAME).read_text())
    assert (exported / ONNX_TOWER_FILENAME).stat().st_size > 0
    assert info["max_abs_difference_vs_torch"] <= 1e-3 and info["fingerprint"]
    assert not list(exported.glob(".onnx-export-*"))  # the temporary folder is gone
    assert not list(exported.glob("*.onnx.data"))  # self-contained: no external-data file
    import onnx

    assert onnx.load(str(exported / ONNX_TOWER_FILENAME), load_external_data=False).graph.initializer
    model = MclSTExpModel.from_pretrained(exported).eval()
    tower, why = load_onnx_tower(model, exported)
    assert tower is not None, why
    pixels = torch.rand(5, 3, model.config.patch_size, model.config.patch_size)  # batch ≠ export's
    with torch.no_grad():
        reference = model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(tower(pixels), reference, rtol=1e-4, atol=1e-4)


def test_predict_uses_the_export_and_matches_torch(exported, synthetic, tmp_path, capsys):
    synthetic.spots.to_csv(tmp_path / "spots.csv", index=False)
    outs = {}
    for backend in ("torch", "onnxruntime", "auto"):
        out = tmp_path / f"{backend}.h5ad"
        code = main(["predict", "--model", str(exported), "--image", str(synthetic.image),
                     "--spots", str(tmp_path / "spots.csv"), "--out", str(out), "--quiet",
                     "--device", "cpu", "--precision", "fp32", "--backend", backend])
        assert code == 0, capsys.readouterr().err
        outs[backend] = ad.read_h5ad(out)
    assert outs["torch"].uns["mclstexp"]["image_tower_backend"] == "torch"
    assert outs["onnxruntime"].uns["mclstexp"]["image_tower_backend"] == "onnxruntime"
    assert outs["auto"].uns["mclstexp"]["image_tower_backend"] == "onnxruntime"
    np.testing.assert_allclose(outs["onnxruntime"].X, outs["torch"].X, rtol=1e-3, atol=1e-4)


def test_a_stale_or_missing_export_is_never_used(exported, synthetic, tmp_path, capsys):
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    model = MclSTExpModel.from_pretrained(stale).eval()
    with torch.no_grad():
        model.image_projection.linear_in.weight.mul_(1.01)  # other weights than the export's
    record = attach_onnx_tower(model, stale, "auto")
    assert model.onnx_image_tower is None and record["image_tower_backend"] == "torch"
    assert "stale" in record["image_tower_backend_note"]
    with pytest.raises(ValueError, match="stale"):
        attach_onnx_tower(model, stale, "onnxruntime")
    # no export at all: auto falls back, an explicit request is refused with the fix
    plain = tmp_path / "plain"
    shutil.copytree(synthetic.checkpoint, plain)
    synthetic.spots.to_csv(tmp_path / "spots.csv", index=False)
    out = tmp_path / "x.h5ad"
    code = main(["predict", "--model", str(plain), "--image", str(synthetic.image), "--spots",
                 str(tmp_path / "spots.csv"), "--out", str(out), "--quiet", "--device", "cpu",
                 "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "mclstexp onnx" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["onnx", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
