"""`mclstexp predict` without PyTorch: the tower's ONNX export (ONNX Runtime fp32, OpenVINO
bf16) + NumPy retrieval.

The PyTorch-free runtime must give the pipeline's predictions, never import torch or
transformers, and step aside (to the PyTorch pipeline) whenever a condition fails: stale export,
bf16 without a bf16 runtime, an explicit torch backend, a saved FAISS index. Synthetic
checkpoint from conftest.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

from mclstexp_hub import MclSTExpModel
from mclstexp_hub.cli import main
from mclstexp_hub.models.mclstexp import precision_mclstexp
from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import (
    ONNX_TOWER_INFO_FILENAME,
    checkpoint_tower_fingerprint,
    tower_fingerprint,
)
from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
from mclstexp_hub.models.mclstexp.retrieval_mclstexp import SAVED_INDEX_FILENAME
from mclstexp_hub.prediction.onnx_runtime import RUNTIME, onnx_predictor, runtime_label
from mclstexp_hub.prediction.predict import load_pipeline, predict_to_h5ad


def _predict(model, synthetic, out, *extra):
    return main(["predict", "--model", str(model), "--image", str(synthetic.image), "--spots",
                 str(synthetic.spots_csv), "--out", str(out), "--quiet", "--device", "cpu",
                 *extra])


def test_fingerprint_from_the_files_equals_the_loaded_models(exported):
    model = MclSTExpModel.from_pretrained(exported)
    assert checkpoint_tower_fingerprint(exported) == tower_fingerprint(model)
    recorded = json.loads((exported / ONNX_TOWER_INFO_FILENAME).read_text())["fingerprint"]
    assert recorded == tower_fingerprint(model)


def test_numpy_and_torch_pixel_scaling_are_identical():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 3, 8, 8), dtype=np.uint8)
    for scaling in ("unit", "imagenet"):
        from_numpy = scale_pixel_values(pixels, scaling)
        from_torch = scale_pixel_values(torch.from_numpy(pixels), scaling).numpy()
        assert from_numpy.dtype == np.float32
        np.testing.assert_array_equal(from_numpy, from_torch)
    with pytest.raises(ValueError, match="uint8"):
        scale_pixel_values(pixels.astype(np.float32), "unit")


def test_torch_free_prediction_equals_the_pipelines(exported, synthetic, tmp_path, capsys):
    # fp32 on both sides: `auto` is bf16 in PyTorch on a CPU with native bf16
    assert _predict(exported, synthetic, tmp_path / "torch.h5ad", "--backend", "torch",
                    "--precision", "fp32") == 0
    assert _predict(exported, synthetic, tmp_path / "onnx.h5ad", "--precision", "fp32") == 0, \
        capsys.readouterr().err
    torch_run, onnx_run = ad.read_h5ad(tmp_path / "torch.h5ad"), ad.read_h5ad(tmp_path / "onnx.h5ad")
    info = onnx_run.uns["mclstexp"]
    assert info["runtime"] == RUNTIME and info["image_tower_backend"] == "onnxruntime"
    assert info["precision"] == "fp32" and info["retrieval_search"] == "exact"
    assert torch_run.uns["mclstexp"]["runtime"] == "pytorch"
    assert "--backend torch" in torch_run.uns["mclstexp"]["runtime_note"]
    np.testing.assert_allclose(onnx_run.X, torch_run.X, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onnx_run.layers["neighbour_spread"],
                               torch_run.layers["neighbour_spread"], rtol=1e-4, atol=1e-5)
    # the same export run by the PyTorch pipeline: the same AnnData and provenance
    pipe = load_pipeline(exported, device="cpu", backend="onnxruntime")
    predict_to_h5ad(exported, synthetic.image, tmp_path / "piped.h5ad",
                    spots_csv=synthetic.spots_csv, progress=False, pipe=pipe, precision="fp32")
    piped = ad.read_h5ad(tmp_path / "piped.h5ad")
    np.testing.assert_allclose(onnx_run.X, piped.X, rtol=1e-5, atol=1e-6)
    assert list(onnx_run.obs_names) == list(piped.obs_names)
    assert list(onnx_run.var_names) == list(piped.var_names)
    np.testing.assert_array_equal(onnx_run.obsm["spatial"], piped.obsm["spatial"])
    library = next(iter(piped.uns["spatial"]))
    np.testing.assert_array_equal(onnx_run.uns["spatial"][library]["images"]["hires"],
                                  piped.uns["spatial"][library]["images"]["hires"])
    for key, value in piped.uns["mclstexp"].items():
        if key != "created":
            assert str(info[key]) == str(value), key


def test_the_runtime_never_imports_torch_or_transformers(exported, synthetic, tmp_path):
    script = (
        "import sys\n"
        "from mclstexp_hub.cli import main\n"
        f"code = main(['predict', '--model', {str(exported)!r}, '--image', {str(synthetic.image)!r},"
        f" '--spots', {str(synthetic.spots_csv)!r}, '--out', {str(tmp_path / 'p.h5ad')!r},"
        " '--quiet', '--device', 'cpu'])\n"
        "loaded = [m for m in ('torch', 'transformers', 'torchvision', 'timm') if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout
    # auto: ONNX Runtime fp32, or OpenVINO bf16 on a CPU with native bf16 (neither needs torch)
    expected = runtime_label(precision_mclstexp.export_plan("auto")[0])
    assert ad.read_h5ad(tmp_path / "p.h5ad").uns["mclstexp"]["runtime"] == expected


def test_the_runtime_steps_aside_when_a_condition_fails(exported, synthetic, tmp_path, monkeypatch):
    assert onnx_predictor(exported, device="cpu")[0] is not None
    assert onnx_predictor(exported, device="cpu", backend="torch") == (None, "--backend torch")
    # bf16: OpenVINO only on a CPU with native bf16, never ONNX Runtime
    monkeypatch.setattr(precision_mclstexp, "cpu_has_native_bf16", lambda: False)
    assert "native bf16" in onnx_predictor(exported, device="cpu", precision="bf16")[1]
    monkeypatch.setattr(precision_mclstexp, "cpu_has_native_bf16", lambda: True)
    assert "fp32 only" in onnx_predictor(exported, device="cpu", backend="onnxruntime",
                                         precision="bf16")[1]
    real = precision_mclstexp.runtime_installed
    monkeypatch.setattr(precision_mclstexp, "runtime_installed", lambda name: name != "openvino" and real(name))
    assert "openvino is not installed" in onnx_predictor(exported, device="cpu", precision="bf16")[1]
    monkeypatch.undo()
    assert "--device cuda" in onnx_predictor(exported, device="cuda")[1]
    assert onnx_predictor(tmp_path / "nowhere", device="cpu")[0] is None
    # other weights than the export's: stale, never run
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    model = MclSTExpModel.from_pretrained(stale)
    with torch.no_grad():
        model.image_projection.linear_in.weight.mul_(1.01)
    model.save_pretrained(stale)
    runner, why = onnx_predictor(stale, device="cpu")
    assert runner is None and "stale" in why
    # a saved FAISS index is attached by the PyTorch path: step aside
    indexed = tmp_path / "indexed"
    shutil.copytree(exported, indexed)
    (indexed / SAVED_INDEX_FILENAME).write_bytes(b"")
    assert SAVED_INDEX_FILENAME in onnx_predictor(indexed, device="cpu")[1]


def test_auto_on_a_native_bf16_cpu_keeps_the_export_for_small_runs_only(
        exported, synthetic, tmp_path, monkeypatch, capsys):
    """precision auto where the CPU has native bf16 but OpenVINO (the export's bf16 runtime) is
    not installed: the fp32 export serves a run of up to AUTO_ONNX_MAX_SPOTS spots (PyTorch's
    start-up would cost more than bf16 saves); above it the run goes to PyTorch bf16; an
    explicit bf16 never runs the fp32 export. Recorded either way."""
    monkeypatch.setattr(precision_mclstexp, "cpu_has_native_bf16", lambda: True)
    real = precision_mclstexp.runtime_installed
    monkeypatch.setattr(precision_mclstexp, "runtime_installed", lambda name: name != "openvino" and real(name))
    limit = precision_mclstexp.AUTO_ONNX_MAX_SPOTS
    plan = precision_mclstexp.export_plan
    assert plan("auto", "auto", limit)[:2] == ("onnxruntime", "fp32")
    assert plan("auto")[:2] == ("onnxruntime", "fp32")  # count not known yet
    assert plan("auto", "auto", limit + 1)[0] is None
    assert f"{limit + 1} spots" in plan("auto", "auto", limit + 1)[2]
    assert plan("bf16", "auto", 1)[0] is None and "openvino" in plan("bf16", "auto", 1)[2]
    assert plan("auto", "onnxruntime", limit + 1)[:2] == ("onnxruntime", "fp32")  # explicit: kept
    assert onnx_predictor(exported, device="cpu")[0] is not None
    assert onnx_predictor(exported, device="cpu", precision="bf16")[0] is None
    assert _predict(exported, synthetic, tmp_path / "small.h5ad") == 0, capsys.readouterr().err
    small = ad.read_h5ad(tmp_path / "small.h5ad").uns["mclstexp"]
    assert small["runtime"] == RUNTIME and small["precision"] == "fp32"
    assert small["precision_requested"] == "auto" and "rather than PyTorch bf16" in small["precision_note"]
    # a run larger than the limit (here: every run) is sent to PyTorch bf16 once its spots are known
    monkeypatch.setattr(precision_mclstexp, "AUTO_ONNX_MAX_SPOTS", 1)
    assert _predict(exported, synthetic, tmp_path / "large.h5ad") == 0, capsys.readouterr().err
    large = ad.read_h5ad(tmp_path / "large.h5ad")
    info = large.uns["mclstexp"]
    assert info["runtime"] == "pytorch" and info["precision"] == "bf16"
    assert "faster at this size" in info["runtime_note"]
    fp32 = ad.read_h5ad(tmp_path / "small.h5ad")
    assert large.n_obs == fp32.n_obs and list(large.obs_names) == list(fp32.obs_names)


def test_an_explicit_k_is_used_and_a_bad_one_refused(exported, synthetic, tmp_path, capsys):
    assert _predict(exported, synthetic, tmp_path / "k3.h5ad", "--k", "3") == 0
    assert ad.read_h5ad(tmp_path / "k3.h5ad").uns["mclstexp"]["retrieval_k"] == 3
    code = _predict(exported, synthetic, tmp_path / "k0.h5ad", "--k", str(10 ** 6))
    err = capsys.readouterr().err
    assert code == 2 and "larger than the spot bank" in err and "Traceback" not in err
    assert not (tmp_path / "k0.h5ad").exists()


def test_evaluate_runs_the_exported_tower_with_the_pipelines_scores(exported, synthetic, tmp_path):
    """`mclstexp evaluate` uses a valid export in fp32 on the CPU, as predict does: same scores
    as the PyTorch tower, the runtime recorded; an impossible request is refused up front."""
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint

    section = [synthetic.sections[0]]
    common = {"allow_bank_overlap": True, "progress": False, "precision": "fp32", "n_map_genes": 0}
    onnx, paths = evaluate_checkpoint(exported, synthetic.dataset, section, tmp_path / "onnx",
                                      **common)
    torch_run, torch_paths = evaluate_checkpoint(exported, synthetic.dataset, section,
                                                 tmp_path / "torch", backend="torch", **common)
    recorded = json.loads(paths["metrics_json"].read_text())
    assert recorded["image_tower"]["image_tower_backend"] == "onnxruntime"
    assert recorded["precision"] == "fp32"
    assert json.loads(torch_paths["metrics_json"].read_text())["image_tower"] == {
        "image_tower_backend": "torch"}
    for a, b in zip(onnx, torch_run, strict=True):
        assert a.pcc_acg == pytest.approx(b.pcc_acg, abs=1e-4)
        assert a.mse == pytest.approx(b.mse, rel=1e-4)
    with pytest.raises(ValueError, match="--backend onnxruntime"):
        evaluate_checkpoint(synthetic.checkpoint, synthetic.dataset, section, tmp_path / "none",
                            backend="onnxruntime", **common)
    with pytest.raises(ValueError, match="--precision bf16"):
        evaluate_checkpoint(exported, synthetic.dataset, section, tmp_path / "bf16",
                            backend="onnxruntime", **{**common, "precision": "bf16"})
    assert not (tmp_path / "none").exists() and not (tmp_path / "bf16").exists()
    with pytest.raises(ValueError, match="backend"):
        evaluate_checkpoint(exported, synthetic.dataset, section, tmp_path / "bad",
                            backend="tensorrt", **common)


def test_openvino_runs_the_export_in_bf16_where_the_cpu_has_it(exported, synthetic, tmp_path,
                                                                monkeypatch, capsys):
    """precision auto on a native-bf16 CPU with OpenVINO installed: the export runs in OpenVINO
    bf16 for any run size, PyTorch-free, recorded as such and close to fp32; `--backend
    openvino --precision fp32` gives ONNX Runtime's numbers; the pipeline and `evaluate` pick
    the same runtime for the same precision."""
    pytest.importorskip("openvino", reason="openvino (the onnx extra) is not installed")
    from mclstexp_hub.evaluation.evaluate import evaluate_checkpoint

    monkeypatch.setattr(precision_mclstexp, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision_mclstexp, "AUTO_ONNX_MAX_SPOTS", 1)  # no fp32 fallback here
    assert precision_mclstexp.export_plan("auto", "auto", 10 ** 6) == ("openvino", "bf16", None)
    assert _predict(exported, synthetic, tmp_path / "fp32.h5ad", "--precision", "fp32") == 0
    assert _predict(exported, synthetic, tmp_path / "bf16.h5ad") == 0, capsys.readouterr().err
    assert _predict(exported, synthetic, tmp_path / "ov32.h5ad", "--backend", "openvino",
                    "--precision", "fp32") == 0, capsys.readouterr().err
    fp32, bf16, ov32 = (ad.read_h5ad(tmp_path / f"{n}.h5ad") for n in ("fp32", "bf16", "ov32"))
    info = bf16.uns["mclstexp"]
    assert info["runtime"] == runtime_label("openvino") and info["image_tower_backend"] == "openvino"
    assert info["precision"] == "bf16" and info["precision_requested"] == "auto"
    assert ov32.uns["mclstexp"]["precision"] == "fp32"
    assert ov32.uns["mclstexp"]["image_tower_backend"] == "openvino"
    np.testing.assert_allclose(ov32.X, fp32.X, rtol=1e-4, atol=1e-5)
    assert np.corrcoef(bf16.X.ravel(), fp32.X.ravel())[0, 1] > 0.99
    # the PyTorch pipeline with the export attached runs the same runtime per precision
    pipe = load_pipeline(exported, device="cpu")
    assert pipe._tower_backend("bf16") == "openvino" and pipe._tower_backend("fp32") == "onnxruntime"
    section = [synthetic.sections[0]]
    _, paths = evaluate_checkpoint(exported, synthetic.dataset, section, tmp_path / "ev",
                                   allow_bank_overlap=True, progress=False, precision="bf16",
                                   n_map_genes=0, backend="openvino")
    recorded = json.loads(paths["metrics_json"].read_text())
    assert recorded["image_tower"]["image_tower_backend"] == "openvino"
    assert recorded["precision"] == "bf16"
