"""Issue 2: the transformers-native config and model (towers, loss, errors, persistence)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

from mclstexp_hub import MclSTExpConfig, MclSTExpModel
from mclstexp_hub.models.mclstexp.modeling_mclstexp import contrastive_loss

GENES = [f"GENE{i}" for i in range(24)]
SMALL = dict(gene_names=GENES, image_encoder="resnet10t", max_position=64)


def _inputs(batch: int = 4, size: int = 64, n_genes: int = len(GENES), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=g)
    expression = torch.rand(batch, n_genes, generator=g)
    positions = torch.randint(0, 64, (batch, 2), generator=g)
    return pixels, expression, positions


@pytest.fixture(scope="module")
def small_model() -> MclSTExpModel:
    torch.manual_seed(0)
    return MclSTExpModel(MclSTExpConfig(**SMALL)).eval()


# ----------------------------------------------------------------------------- config
def test_config_defaults_follow_the_paper():
    cfg = MclSTExpConfig(gene_names=GENES)
    assert cfg.model_type == "mclstexp"
    assert cfg.n_genes == len(GENES)
    assert cfg.image_encoder == "densenet121"
    assert cfg.image_encoder_final_activation is False
    assert (cfg.projection_dim, cfg.spot_encoder_layers, cfg.spot_encoder_heads) == (256, 2, 8)
    assert cfg.spot_encoder_head_dim == 64 and cfg.spot_mlp_dim == len(GENES)
    assert cfg.max_position == 65536 and cfg.contrastive_temperature == 1.0
    assert (cfg.retrieval_k, cfg.retrieval_distance, cfg.retrieval_weighting) == (
        200,
        "l1",
        "inverse_square",
    )
    assert cfg.patch_size == 224 and cfg.pixel_scaling == "unit"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"gene_names": []}, "gene_names"),
        ({"gene_names": None}, "gene_names"),
        ({"gene_names": ["A", "B", "A"]}, "duplicates"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"max_position": -5}, "max_position"),
        ({"patch_size": 0}, "patch_size"),
        ({"spot_encoder_heads": 0}, "spot_encoder_heads"),
        ({"retrieval_k": 0}, "retrieval_k"),
        ({"spot_encoder_layers": -1}, "spot_encoder_layers"),
        ({"image_encoder": "not_a_real_net"}, "image_encoder"),
        ({"retrieval_weighting": "median"}, "retrieval_weighting"),
        ({"retrieval_distance": "l3"}, "retrieval_distance"),
        ({"pixel_scaling": "zscore"}, "pixel_scaling"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    kwargs = {"gene_names": GENES, **overrides}
    with pytest.raises(ValueError, match=field):
        MclSTExpConfig(**kwargs)


def test_config_error_lists_allowed_values():
    with pytest.raises(ValueError, match="inverse_square.*mean.*softmax"):
        MclSTExpConfig(gene_names=GENES, retrieval_weighting="median")


def test_feature_width_comes_from_timm(small_model):
    expected = timm.create_model("resnet10t", pretrained=False, num_classes=0).num_features
    assert small_model.config.image_feature_dim == expected
    with pytest.raises(ValueError, match="image_feature_dim"):
        MclSTExpModel(MclSTExpConfig(**SMALL, image_feature_dim=expected + 1))


# ------------------------------------------------------------------------------ towers
def test_forward_backward_small_encoder(small_model):
    model = MclSTExpModel(small_model.config).train()
    pixels, expression, positions = _inputs()
    out = model(pixel_values=pixels, expression=expression, positions=positions)
    assert out.image_embeds.shape == (4, 256) and out.spot_embeds.shape == (4, 256)
    assert out.logits_per_image.shape == (4, 4)
    assert torch.allclose(out.logits_per_image, out.logits_per_spot.T)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name in ("image_projection.linear_in.weight", "spot_encoder.0.attention.qkv.weight",
                 "x_embed.weight", "image_encoder.model.conv1.0.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_forward_backward_densenet121():
    cfg = MclSTExpConfig(gene_names=GENES, max_position=64)
    model = MclSTExpModel(cfg).train()
    assert cfg.image_feature_dim == 1024
    pixels, expression, positions = _inputs(batch=3, size=64)
    out = model(pixel_values=pixels, expression=expression, positions=positions)
    assert out.image_embeds.shape == (3, 256)
    out.loss.backward()
    conv0 = model.image_encoder.model.features.conv0.weight
    assert conv0.grad is not None and conv0.grad.abs().sum() > 0


def test_loss_equals_independent_symmetric_cross_entropy(small_model):
    pixels, expression, positions = _inputs(batch=6, seed=3)
    with torch.no_grad():
        out = small_model(pixel_values=pixels, expression=expression, positions=positions)
    logits = out.spot_embeds @ out.image_embeds.T / small_model.config.contrastive_temperature
    # the reference: cross-entropy against identity soft targets, both directions, averaged
    eye = torch.eye(6)
    expected = (
        -(eye * F.log_softmax(logits, dim=1)).sum(1).mean()
        - (eye * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    ) / 2
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert torch.allclose(contrastive_loss(logits), expected, atol=1e-5)


def test_temperature_scales_logits():
    torch.manual_seed(0)
    cfg = MclSTExpConfig(**SMALL, contrastive_temperature=2.0)
    model = MclSTExpModel(cfg).eval()
    pixels, expression, positions = _inputs()
    with torch.no_grad():
        out = model(pixel_values=pixels, expression=expression, positions=positions)
    assert torch.allclose(out.logits_per_spot, out.spot_embeds @ out.image_embeds.T / 2.0)


def test_features_are_unnormalised_projection_outputs(small_model):
    pixels, expression, positions = _inputs()
    with torch.no_grad():
        img = small_model.get_image_features(pixels).pooler_output
        spot = small_model.get_spot_features(expression, positions)
        img_manual = small_model.image_projection(small_model.image_encoder(pixels))
    assert torch.allclose(img, img_manual)
    # LayerNorm outputs over 256 dims have norm ≈ sqrt(256), far from 1
    assert img.norm(dim=1).mean() > 2.0 and spot.norm(dim=1).mean() > 2.0


def test_spots_of_a_batch_attend_to_each_other(small_model):
    _, expression, positions = _inputs(batch=6)
    with torch.no_grad():
        together = small_model.get_spot_features(expression, positions)
        first_three = small_model.get_spot_features(expression[:3], positions[:3])
    assert not torch.allclose(together[:3], first_three, atol=1e-5)


def test_bleep_style_ablation_has_no_spot_transformer_or_positions():
    cfg = MclSTExpConfig(**{**SMALL, "spot_encoder_layers": 0, "use_position_embeddings": False})
    model = MclSTExpModel(cfg).eval()
    assert len(model.spot_encoder) == 0 and not hasattr(model, "x_embed")
    _, expression, _ = _inputs(batch=5)
    with torch.no_grad():
        together = model.get_spot_features(expression, None)
        alone = model.get_spot_features(expression[:2], None)
    assert torch.allclose(together[:2], alone, atol=1e-6)  # spots are independent


def test_encoder_initialisation_is_timm_own():
    torch.manual_seed(123)
    model = MclSTExpModel(MclSTExpConfig(gene_names=GENES, max_position=64))
    torch.manual_seed(123)
    reference = timm.create_model("densenet121", pretrained=False, num_classes=0, global_pool="")
    ours = model.image_encoder.model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key
    # and it is not the transformers N(0, 0.02) default
    assert model.image_encoder.model.features.conv0.weight.std() > 0.05


def test_fidelity_switch_removes_only_the_final_relu():
    torch.manual_seed(0)
    cfg_ref = MclSTExpConfig(gene_names=GENES, max_position=64)
    no_relu = MclSTExpModel(cfg_ref).eval()
    cfg_act = MclSTExpConfig(gene_names=GENES, max_position=64, image_encoder_final_activation=True)
    with_relu = MclSTExpModel(cfg_act).eval()
    with_relu.load_state_dict(no_relu.state_dict())
    assert isinstance(no_relu.image_encoder.model.features.norm5.act, torch.nn.Identity)
    assert isinstance(with_relu.image_encoder.model.features.norm5.act, torch.nn.ReLU)
    # same parameter names and shapes: only the activation differs
    assert no_relu.state_dict().keys() == with_relu.state_dict().keys()
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fmap = no_relu.image_encoder.model.forward_features(pixels)
        fmap_relu = with_relu.image_encoder.model.forward_features(pixels)
        pooled = no_relu.image_encoder(pixels)
    assert (fmap < 0).any(), "without the final ReLU the BatchNorm output has negative values"
    assert torch.allclose(fmap_relu, fmap.clamp_min(0))
    assert torch.allclose(pooled, fmap.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------ errors
def test_wrong_gene_count_is_explained(small_model):
    pixels, expression, positions = _inputs(n_genes=len(GENES) + 1)
    with pytest.raises(ValueError, match=f"{len(GENES) + 1} genes.*{len(GENES)}"):
        small_model(pixel_values=pixels, expression=expression, positions=positions)


def test_positions_out_of_range_are_explained(small_model):
    pixels, expression, positions = _inputs()
    positions[0, 0] = 64
    with pytest.raises(ValueError, match=r"\[0, 64\).*max_position"):
        small_model(pixel_values=pixels, expression=expression, positions=positions)
    positions[0, 0] = -1
    with pytest.raises(ValueError, match="max_position"):
        small_model.get_spot_features(expression, positions)


def test_bad_shapes_are_explained(small_model):
    pixels, expression, positions = _inputs()
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        small_model.get_image_features(pixels[0])
    with pytest.raises(ValueError, match="3 colour channels"):
        small_model.get_image_features(pixels.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"positions must be \(4, 2\)"):
        small_model.get_spot_features(expression, positions[:3])
    with pytest.raises(ValueError, match="integer array"):
        small_model.get_spot_features(expression, positions.float() + 0.5)
    with pytest.raises(ValueError, match="expression must be"):
        small_model.get_spot_features(expression[0], positions)


def test_predict_without_bank_says_how_to_attach(small_model):
    pixels, _, _ = _inputs()
    with pytest.raises(ValueError, match="attach_spot_bank"):
        small_model.predict_expression(pixel_values=pixels)


# ------------------------------------------------------------------------- persistence
def test_save_and_auto_reload_give_identical_outputs(tmp_path, small_model):
    small_model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    # remote code travels with the weights
    assert {"configuration_mclstexp.py", "modeling_mclstexp.py"} <= files
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["model_type"] == "mclstexp"
    assert config_json["auto_map"]["AutoModel"] == "modeling_mclstexp.MclSTExpModel"
    assert config_json["gene_names"] == GENES

    assert type(AutoConfig.from_pretrained(tmp_path)) is MclSTExpConfig
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(reloaded) is MclSTExpModel
    pixels, expression, positions = _inputs()
    with torch.no_grad():
        a = small_model(pixel_values=pixels, expression=expression, positions=positions)
        b = reloaded(pixel_values=pixels, expression=expression, positions=positions)
    assert torch.equal(a.image_embeds, b.image_embeds)
    assert torch.equal(a.spot_embeds, b.spot_embeds)
    assert torch.equal(a.loss, b.loss)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "mclstexp_hub" or name.startswith("mclstexp_hub."):
                raise ImportError("mclstexp_hub is blocked in this test")
    sys.meta_path.insert(0, _Block())
    try:
        import mclstexp_hub  # noqa: F401
        raise SystemExit("mclstexp_hub was importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert "mclstexp_hub" not in type(model).__module__, type(model).__module__
    inputs = torch.load(sys.argv[2])
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"image": out.image_embeds, "spot": out.spot_embeds}, sys.argv[3])
    """
)


def test_remote_code_load_without_the_package(tmp_path, small_model):
    ckpt = tmp_path / "ckpt"
    small_model.save_pretrained(ckpt)
    pixels, expression, positions = _inputs()
    torch.save(
        {"pixel_values": pixels, "expression": expression, "positions": positions},
        tmp_path / "inputs.pt",
    )
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = small_model(pixel_values=pixels, expression=expression, positions=positions)
    assert torch.equal(remote["image"], local.image_embeds)
    assert torch.equal(remote["spot"], local.spot_embeds)


def test_trains_under_transformers_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = MclSTExpModel(MclSTExpConfig(**SMALL))
    pixels, expression, positions = _inputs(batch=8, size=32)
    ds = Dataset.from_dict({
        "pixel_values": pixels.numpy(), "expression": expression.numpy(),
        "positions": positions.numpy(),
    }).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
        report_to=[], remove_unused_columns=False, use_cpu=True, save_strategy="no",
        logging_steps=1, disable_tqdm=True,
    )
    before = model.image_projection.linear_in.weight.detach().clone()
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
    assert not torch.equal(before, model.image_projection.linear_in.weight)
