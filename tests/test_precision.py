"""`--precision`: bf16 autocast + channels-last must predict what fp32 predicts (parity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mclstexp_hub.models.mclstexp.precision_mclstexp import (
    PRECISIONS,
    autocast,
    cpu_has_native_bf16,
    prepare_pixels,
    resolve_precision,
)


def test_resolution_rules():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected == resolve_precision(None, "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")
    assert set(PRECISIONS) == {"auto", "fp32", "bf16"}
    x = torch.zeros(2, 3, 8, 8)
    assert prepare_pixels(x, "bf16").is_contiguous(memory_format=torch.channels_last)
    assert prepare_pixels(x, "fp32").is_contiguous(memory_format=torch.channels_last)  # both
    with autocast("bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def b4_patches(her2st_dir):
    """Every 8th real B4 spot's 224 px patch, cut by the one slide reader."""
    from test_pipeline_helpers import B4_IMAGE, her2st_spots

    from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide

    spots = her2st_spots(her2st_dir, "B4", every=8)
    with open_slide(her2st_dir.joinpath(*B4_IMAGE)) as slide:
        patches = [slide.read_patch(x, y, 224) for x, y in spots[["pixel_x", "pixel_y"]].to_numpy()]
    return spots, patches


@pytest.fixture(scope="module")
def b4_tower(b4_patches):
    """A DenseNet-121 tower whose bank is the fp32 embeddings of half the real B4 patches with
    real-looking expression (a fixed random gene programme of the embeddings), so retrieval
    has structure to find; the other half are the queries (float pixels) with their fp32
    embeddings."""
    from mclstexp_hub.models.mclstexp.configuration_mclstexp import MclSTExpConfig
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    torch.manual_seed(0)
    genes = [f"G{i}" for i in range(50)]
    model = MclSTExpModel(MclSTExpConfig(gene_names=genes, has_spot_encoder=False,
                                         retrieval_k=10)).eval()
    _, patches = b4_patches
    pixels = scale_pixel_values(torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous())
    half = len(pixels) // 2
    with torch.no_grad():
        bank_emb = model.get_image_features(pixels[:half]).pooler_output
        fp32 = model.get_image_features(pixels[half:]).pooler_output
    programme = torch.randn(bank_emb.shape[1], len(genes), generator=torch.Generator().manual_seed(1))
    model.spot_bank = SpotBank(bank_emb, torch.relu(bank_emb @ programme), genes)
    return model, pixels[half:], fp32


def _assert_parity(model, fp32: torch.Tensor, other: torch.Tensor, k: int = 5) -> None:
    """The issue's bar: top-k neighbour overlap ≥ 0.9 and per-gene Pearson r ≥ 0.99."""
    a = model.predict_expression(image_embeds=fp32, k=k)
    b = model.predict_expression(image_embeds=other.float(), k=k)
    overlap = np.mean([len(set(x.tolist()) & set(y.tolist())) / k
                       for x, y in zip(a.neighbour_indices, b.neighbour_indices, strict=True)])
    pa, pb = a.expression.numpy(), b.expression.numpy()
    r = [np.corrcoef(pa[:, g], pb[:, g])[0, 1] for g in range(pa.shape[1]) if pa[:, g].std() > 0]
    assert overlap >= 0.9, overlap
    assert min(r) >= 0.99, min(r)


@pytest.mark.realdata
def test_bf16_matches_fp32_on_real_patches(b4_tower):
    """Real B4 patches through a DenseNet-121 tower, PyTorch bf16 autocast + channels-last."""
    model, queries, fp32 = b4_tower
    with torch.no_grad():
        model.to(memory_format=torch.channels_last)
        with autocast("bf16"):
            bf16 = model.get_image_features(prepare_pixels(queries, "bf16")).pooler_output
        model.to(memory_format=torch.contiguous_format)
    _assert_parity(model, fp32, bf16)


@pytest.mark.realdata
def test_openvino_bf16_export_matches_fp32_on_real_patches(b4_tower, tmp_path):
    """The same tower exported to ONNX and run by OpenVINO in bf16 (the export's bf16 runtime)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("openvino", reason="openvino (the onnx extra) is not installed")
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: OpenVINO would compute fp32, nothing to compare")
    from mclstexp_hub.models.mclstexp.onnx_tower_mclstexp import (
        ONNX_TOWER_FILENAME,
        OnnxImageTower,
        export_image_tower,
    )

    model, queries, fp32 = b4_tower
    info = export_image_tower(model, tmp_path)
    tower = OnnxImageTower(tmp_path / ONNX_TOWER_FILENAME, info, backend="openvino")
    assert tower.runtime("bf16") == "openvino"
    _assert_parity(model, fp32, tower(queries, "bf16"))
