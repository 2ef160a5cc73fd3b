"""The converter for the authors' checkpoints reproduces their embeddings.

The authors' `mclSTExp_Attention` is re-expressed here independently (same parameter names and
shapes, forward semantics written out by hand: pre-norm blocks with explicit softmax attention
over the spots of a batch, torchvision's DenseNet-121 `features` + average pooling, projection
heads with a residual). Random weights are saved with their key names, converted, and our model
must give the same image and spot embeddings to within 1e-5 in float32, eval mode.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors import safe_open
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "conversion" / "convert_mclstexp_original.py"
N_GENES = 20
PATCH = 64
TOL = 1e-5


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_mclstexp_original", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


conv = _load_converter()


# ------------------------------------------------------------------ the authors' layout
class _Node(nn.Module):
    """A plain container: attribute names become state_dict key segments."""


def _projection_head(in_dim: int, out_dim: int) -> nn.Module:
    head = _Node()
    head.projection = nn.Linear(in_dim, out_dim)
    head.fc = nn.Linear(out_dim, out_dim)
    head.layer_norm = nn.LayerNorm(out_dim)
    return head


def _head_forward(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    projected = head.projection(x)
    return head.layer_norm(head.fc(torch.nn.functional.gelu(projected)) + projected)


def _attention_block(dim: int, heads: int, head_dim: int, mlp_dim: int) -> nn.Module:
    block = _Node()
    block.attn = _Node()
    block.attn.norm = nn.LayerNorm(dim)
    block.attn.fn = _Node()
    block.attn.fn.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
    block.attn.fn.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(0.0))
    block.ff = _Node()
    block.ff.norm = nn.LayerNorm(dim)
    block.ff.fn = _Node()
    block.ff.fn.net = nn.Sequential(
        nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim), nn.Dropout(0.0)
    )
    return block


class AuthorsModel(nn.Module):
    """Parameter layout of the authors' mclSTExp_Attention; forward written independently."""

    def __init__(self, encoder: str = "densenet121", n_genes: int = N_GENES, heads: int = 8,
                 head_dim: int = 64, layers: int = 2, projection_dim: int = 256) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.x_embed = nn.Embedding(65536, n_genes)
        self.y_embed = nn.Embedding(65536, n_genes)
        self.image_encoder = _Node()
        if encoder == "densenet121":
            net = torchvision.models.densenet121(weights=None)
            image_dim = 1024
        else:
            net = torchvision.models.resnet18(weights=None)
            image_dim = 512
        self.image_encoder.model = nn.Sequential(*list(net.children())[:-1])
        self.spot_encoder = nn.Sequential(
            *[_attention_block(n_genes, heads, head_dim, n_genes) for _ in range(layers)]
        )
        self.image_projection = _projection_head(image_dim, projection_dim)
        self.spot_projection = _projection_head(n_genes, projection_dim)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.image_encoder.model(pixels).mean(dim=(2, 3))
        return _head_forward(self.image_projection, features)

    def spot_embeddings(self, expression: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """All spots given form one sequence, as one batch of the authors' loader."""
        x = expression + self.x_embed(positions[:, 0].long()) + self.y_embed(positions[:, 1].long())
        n, inner = x.shape[0], self.heads * self.head_dim
        for block in self.spot_encoder:
            q, k, v = block.attn.fn.to_qkv(block.attn.norm(x)).split(inner, dim=-1)
            q, k, v = (t.reshape(n, self.heads, self.head_dim).transpose(0, 1) for t in (q, k, v))
            weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.head_dim), dim=-1)
            attended = (weights @ v).transpose(0, 1).reshape(n, inner)
            x = x + block.attn.fn.to_out(attended)
            x = x + block.ff.fn.net(block.ff.norm(x))
        return _head_forward(self.spot_projection, x)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere, norms included, so a mis-mapped tensor cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.num_batches_tracked.fill_(7)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def authors() -> AuthorsModel:
    torch.manual_seed(0)
    return _randomise(AuthorsModel(), seed=1)


@pytest.fixture(scope="module")
def genes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("panel") / "her_hvg_cut_1000.npy"
    np.save(path, np.array([f"GENE{i}" for i in range(N_GENES)]))  # unicode, as the authors'
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Three reference sections in the authors' layout: {section}/preprocessed_matrix.npy."""
    root = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)
    sections = {"A2": 30, "B1": 25, "C3": 15}  # 70 spots: batches of 32 cross section borders
    expr_files, pos_files, expressions, positions = [], [], [], []
    for name, n in sections.items():
        expr = rng.random((n, N_GENES), dtype=np.float32) * 2
        pos = np.stack([rng.integers(0, 33, n), rng.integers(0, 35, n)], axis=1)
        (root / name).mkdir()
        np.save(root / name / "preprocessed_matrix.npy", expr.T)  # genes x spots, as theirs
        np.save(root / f"{name}_positions.npy", pos)
        expr_files.append(root / name / "preprocessed_matrix.npy")
        pos_files.append(root / f"{name}_positions.npy")
        expressions.append(expr)
        positions.append(pos)
    return {
        "expression_files": expr_files,
        "position_files": pos_files,
        "expression": torch.from_numpy(np.concatenate(expressions)),
        "positions": torch.from_numpy(np.concatenate(positions)),
        "sections": list(sections),
        "sizes": list(sections.values()),
    }


@pytest.fixture(scope="module")
def checkpoint(authors, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("authors") / "best_0.pt"
    torch.save(authors.state_dict(), path)
    return path


def _pixels(n: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.rand((n, 3, PATCH, PATCH), generator=torch.Generator().manual_seed(seed))


def _reference_bank(authors: AuthorsModel, reference: dict, batch: int = 32) -> torch.Tensor:
    """The authors' bank: consecutive runs of 32 spots over the concatenated sections."""
    with torch.no_grad():
        return torch.cat([
            authors.spot_embeddings(reference["expression"][i : i + batch],
                                    reference["positions"][i : i + batch])
            for i in range(0, len(reference["expression"]), batch)
        ])


@pytest.fixture(scope="module")
def converted_full(checkpoint, genes_file, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "full"
    report = conv.convert_checkpoint(
        checkpoint, genes_file, out,
        reference_expression=reference["expression_files"],
        reference_positions=reference["position_files"],
    )
    return out, report


# -------------------------------------------------------------------------- equivalence
def test_full_conversion_reproduces_image_and_spot_embeddings(authors, converted_full, reference):
    from mclstexp_hub import MclSTExpModel

    out, report = converted_full
    model = MclSTExpModel.from_pretrained(out).eval()
    assert model.config.image_encoder == "densenet121"
    assert model.config.image_encoder_final_activation is False
    assert model.config.n_genes == N_GENES and model.config.max_position == 65536
    assert (model.config.spot_encoder_heads, model.config.spot_encoder_head_dim) == (8, 64)
    pixels = _pixels()
    expr, pos = reference["expression"][:32], reference["positions"][:32]
    with torch.no_grad():
        ours_img, theirs_img = model.get_image_features(pixels).pooler_output, authors.image_embeddings(pixels)
        ours_spot, theirs_spot = model.get_spot_features(expr, pos), authors.spot_embeddings(expr, pos)
    assert theirs_img.abs().max() > 0.1  # not a degenerate comparison
    assert (ours_img - theirs_img).abs().max().item() <= TOL
    assert (ours_spot - theirs_spot).abs().max().item() <= TOL
    assert report.position_rows_saved == 65536 and not report.inference_only


def test_bank_reproduces_the_authors_batched_reference_embeddings(authors, converted_full, reference):
    from mclstexp_hub import SpotBank

    out, report = converted_full
    bank = SpotBank.load(out / "spot_bank.safetensors")
    expected = _reference_bank(authors, reference)
    assert len(bank) == 70 == report.bank_spots
    assert (bank.embeddings - expected).abs().max().item() <= TOL
    assert torch.equal(bank.expression, reference["expression"])
    assert torch.equal(bank.positions, reference["positions"])
    assert bank.section_ids == ["A2"] * 30 + ["B1"] * 25 + ["C3"] * 15
    assert bank.metadata["bank_batch_size"] == 32
    assert "ConcatDataset" in bank.metadata["batching"]


def test_module_prefix_and_old_well_naming_are_accepted(authors, genes_file, tmp_path):
    from mclstexp_hub import MclSTExpModel

    old = {
        "module." + k.replace("spot_encoder", "well_encoder").replace("spot_projection", "well_projection"): v
        for k, v in authors.state_dict().items()
    }
    assert any(k.startswith("module.well_encoder.") for k in old)
    torch.save(old, tmp_path / "best_3.pt")
    conv.convert_checkpoint(tmp_path / "best_3.pt", genes_file, tmp_path / "out")
    model = MclSTExpModel.from_pretrained(tmp_path / "out").eval()
    expr = torch.rand(10, N_GENES)
    pos = torch.randint(0, 40, (10, 2))
    with torch.no_grad():
        diff = (model.get_spot_features(expr, pos) - authors.spot_embeddings(expr, pos)).abs().max()
    assert diff.item() <= TOL
    assert model.spot_bank is None  # no reference given: embeds, cannot predict


def test_sliced_position_tables_keep_spot_embeddings(authors, checkpoint, genes_file, reference,
                                                     converted_full, tmp_path):
    from mclstexp_hub import MclSTExpModel

    report = conv.convert_checkpoint(
        checkpoint, genes_file, tmp_path / "sliced",
        reference_expression=reference["expression_files"],
        reference_positions=reference["position_files"],
        slice_positions=True,
    )
    used = int(reference["positions"].max()) + 1
    assert report.position_rows_saved == used
    model = MclSTExpModel.from_pretrained(tmp_path / "sliced").eval()
    assert model.config.max_position == used
    assert model.x_embed.weight.shape == (used, N_GENES)
    expr, pos = reference["expression"][32:64], reference["positions"][32:64]
    with torch.no_grad():
        diff = (model.get_spot_features(expr, pos) - authors.spot_embeddings(expr, pos)).abs().max()
    assert diff.item() <= TOL
    full_size = converted_full[1].file_sizes["model.safetensors"]
    assert report.file_sizes["model.safetensors"] < full_size - 2 * 65000 * N_GENES * 4


def test_inference_only_checkpoint_predicts_like_the_full_one(authors, checkpoint, genes_file,
                                                              reference, converted_full, tmp_path):
    from mclstexp_hub import MclSTExpModel

    conv.convert_checkpoint(
        checkpoint, genes_file, tmp_path / "infer",
        reference_expression=reference["expression_files"],
        reference_positions=reference["position_files"],
        inference_only=True,
    )
    with safe_open(str(tmp_path / "infer" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith(conv.SPOT_TOWER_PREFIXES)]
    small = MclSTExpModel.from_pretrained(tmp_path / "infer").eval()
    full = MclSTExpModel.from_pretrained(converted_full[0]).eval()
    assert small.config.has_spot_encoder is False
    pixels = _pixels(3, seed=9)
    with torch.no_grad():
        a = small.predict_expression(pixel_values=pixels, k=10)
        b = full.predict_expression(pixel_values=pixels, k=10)
        theirs = authors.image_embeddings(pixels)
    assert (a.image_embeds - theirs).abs().max().item() <= TOL
    assert torch.equal(a.neighbour_indices, b.neighbour_indices)
    assert torch.allclose(a.expression, b.expression, atol=1e-6)
    with pytest.raises(ValueError, match="no spot tower"):
        small.get_spot_features(torch.rand(2, N_GENES), torch.zeros(2, 2, dtype=torch.long))


def test_excluded_section_is_embedded_in_its_batches_then_dropped(authors, checkpoint, genes_file,
                                                                  reference, tmp_path):
    from mclstexp_hub import SpotBank

    conv.convert_checkpoint(
        checkpoint, genes_file, tmp_path / "fold",
        reference_expression=reference["expression_files"],
        reference_positions=reference["position_files"],
        exclude_sections=["B1"], slice_positions=True,
    )
    bank = SpotBank.load(tmp_path / "fold")
    expected = _reference_bank(authors, reference)
    keep = torch.tensor([s != "B1" for s in ["A2"] * 30 + ["B1"] * 25 + ["C3"] * 15])
    assert len(bank) == 45 and "B1" not in bank.section_ids
    assert (bank.embeddings - expected[keep]).abs().max().item() <= TOL
    assert bank.metadata["excluded_sections"] == ["B1"]


def test_resnet18_encoder_is_converted_too(genes_file, tmp_path):
    from mclstexp_hub import MclSTExpModel

    torch.manual_seed(1)
    authors = _randomise(AuthorsModel(encoder="resnet18", heads=2, head_dim=8, layers=1), seed=2)
    torch.save(authors.state_dict(), tmp_path / "best_1.pt")
    conv.convert_checkpoint(tmp_path / "best_1.pt", genes_file, tmp_path / "out", heads=2, head_dim=8)
    model = MclSTExpModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.image_encoder == "resnet18"
    pixels = _pixels(2)
    with torch.no_grad():
        diff = (model.get_image_features(pixels).pooler_output - authors.image_embeddings(pixels)).abs().max()
    assert diff.item() <= TOL


# -------------------------------------------------------------------------------- errors
def test_unknown_and_missing_keys_are_listed(authors, genes_file, tmp_path):
    state = dict(authors.state_dict())
    state["pe_enc.weight"] = torch.zeros(3)  # a key their model does not have
    del state["spot_projection.fc.bias"]
    torch.save(state, tmp_path / "best_0.pt")
    with pytest.raises(conv.ConversionError) as info:
        conv.convert_checkpoint(tmp_path / "best_0.pt", genes_file, tmp_path / "out")
    message = str(info.value)
    assert "unknown key(s): pe_enc.weight" in message
    assert "missing key(s): spot_projection.linear_out.bias" in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_wrong_head_split_gene_panel_and_positions_are_refused(checkpoint, genes_file, reference,
                                                               tmp_path):
    with pytest.raises(conv.ConversionError, match="heads x head_dim = 4 x 64 = 256"):
        conv.convert_checkpoint(checkpoint, genes_file, tmp_path / "a", heads=4)
    short = tmp_path / "panel.txt"
    short.write_text("\n".join(f"GENE{i}" for i in range(N_GENES - 1)) + "\n")
    with pytest.raises(conv.ConversionError, match=f"lists {N_GENES - 1} genes .* {N_GENES} wide"):
        conv.convert_checkpoint(checkpoint, short, tmp_path / "b")
    with pytest.raises(conv.ConversionError, match="one positions file per expression file"):
        conv.convert_checkpoint(checkpoint, genes_file, tmp_path / "c",
                                reference_expression=reference["expression_files"],
                                reference_positions=reference["position_files"][:1])
    bad_pos = tmp_path / "pos.npy"
    np.save(bad_pos, np.zeros((3, 2)))
    with pytest.raises(conv.ConversionError, match="3 positions for 30 expression rows"):
        conv.convert_checkpoint(checkpoint, genes_file, tmp_path / "d",
                                reference_expression=reference["expression_files"][:1],
                                reference_positions=[bad_pos])
    with pytest.raises(conv.ConversionError, match="--inference-only drops the spot tower"):
        conv.convert_checkpoint(checkpoint, genes_file, tmp_path / "e", inference_only=True)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        conv.convert_checkpoint(checkpoint, genes_file, tmp_path / "f")


class _Payload:
    """Pickles to a call that would create a file if it were ever executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickled_code_in_checkpoint_or_panel_is_never_executed(authors, genes_file, tmp_path):
    marker = tmp_path / "executed"
    state = dict(authors.state_dict())
    state["evil"] = _Payload(marker)
    torch.save(state, tmp_path / "best_0.pt")
    with pytest.raises(conv.ConversionError, match="weights_only=True"):
        conv.convert_checkpoint(tmp_path / "best_0.pt", genes_file, tmp_path / "out")
    assert not marker.exists()

    panel = tmp_path / "panel.npy"
    np.save(panel, np.array([_Payload(marker)] + [f"G{i}" for i in range(N_GENES - 1)], dtype=object),
            allow_pickle=True)
    with pytest.raises(conv.ConversionError, match="is not allowed in this file"):
        conv.read_gene_panel(panel)
    assert not marker.exists()


def test_gene_panels_in_the_authors_formats(tmp_path):
    genes = ["PPP1R12A", "S100P", "IMP4"]
    np.save(tmp_path / "object.npy", np.array(genes, dtype=object), allow_pickle=True)  # skin_hvg
    np.save(tmp_path / "unicode.npy", np.array(genes))  # her_hvg
    (tmp_path / "panel.txt").write_text("# panel\n" + "\n".join(genes) + "\n\n")
    for name in ("object.npy", "unicode.npy", "panel.txt"):
        assert conv.read_gene_panel(tmp_path / name) == genes
    with open(tmp_path / "object.npy", "rb") as f:  # the object panel really is a pickle
        assert b"_reconstruct" in f.read()
    (tmp_path / "dup.txt").write_text("A\nB\nA\n")
    with pytest.raises(conv.ConversionError, match="duplicate genes"):
        conv.read_gene_panel(tmp_path / "dup.txt")


def test_script_runs_standalone_and_reports_sizes(checkpoint, genes_file, reference, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint), "--genes", str(genes_file),
           "--out", str(out), "--slice-positions",
           "--reference-expression", *map(str, reference["expression_files"]),
           "--reference-positions", *map(str, reference["position_files"])]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.safetensors" in result.stdout and "total" in result.stdout
    rows = int(reference["positions"].max()) + 1
    assert f"position tables {rows} rows (sliced)" in result.stdout
    assert {"config.json", "model.safetensors", "spot_bank.safetensors"} <= {
        p.name for p in out.iterdir()
    }
