#!/usr/bin/env python
"""Convert the authors' mclSTExp checkpoints (github.com/ZhicengShi/mclSTExp) to our format.

Input: the authors' training output `best_{fold}.pt` — `torch.save(model.state_dict())` of
their `mclSTExp_Attention` (possibly with DataParallel's `module.` prefixes, or the old `well_*`
naming of the spot tower) — their gene panel in its original order (`.npy` as they ship it, or
one gene per line), and optionally their preprocessed reference expression matrices
(`preprocessed_matrix.npy`, genes × spots) with the spots' array positions, to build the spot
bank. Output: an mclstexp-hub checkpoint directory (config, safetensors weights, spot bank, image
processor, remote code) for `MclSTExpModel.from_pretrained` and `mclstexp push`.

The converted model reproduces the authors' image and spot embeddings (their encoder is
torchvision's DenseNet-121 `features` without a final ReLU, which our config states with
`image_encoder_final_activation=False`). Two ways to shrink it:

* `--slice-positions` keeps only the rows of the two 65,536-row position tables that the
  reference coordinates use (rows 0..max); spot embeddings are unchanged for those positions.
* `--inference-only` drops the spot tower: the image tower, its projection and the spot bank
  are all that retrieval needs (the bank is embedded with the full model first).

Safety: the authors' files are pickles. Checkpoints are read with
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers; object-dtype
`.npy` gene panels are read by an unpickler that admits numpy's array constructors and nothing
else. Nothing from these files is ever executed.

    python conversion/convert_mclstexp_original.py --checkpoint best_0.pt \\
        --genes her_hvg_cut_1000.npy --out mclstexp-her2st \\
        --reference-expression data/her2st/*/preprocessed_matrix.npy \\
        --reference-positions positions/*.npy --slice-positions
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mclstexp_hub.data.safe_npy import load_npy_safely

logger = logging.getLogger("convert_mclstexp_original")

TOOL = "convert_mclstexp_original"
# The authors' preprocessing (scprep defaults on the panel's counts), named as in mclstexp_hub.data.
AUTHORS_TRANSFORM = "log10_cp10k_panel"
AUTHORS_UNITS = "log10(1 + 1e4 * count / panel total)"


def _options_module():
    """conversion/options.py (torch-free, shared with `mclstexp convert`), however this file
    was loaded (package import, script, or by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_mclstexp_conversion_options", Path(__file__).with_name("options.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_OPTIONS = _options_module()
AUTHORS_BANK_BATCH_SIZE = _OPTIONS.AUTHORS_BANK_BATCH_SIZE
DEFAULT_HEADS, DEFAULT_HEAD_DIM = _OPTIONS.DEFAULT_HEADS, _OPTIONS.DEFAULT_HEAD_DIM
build_parser = _OPTIONS.build_parser


class ConversionError(ValueError):
    """A checkpoint or input file that cannot be converted; the message says why and the fix."""


# --------------------------------------------------------------------------- reading inputs
def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The authors' `state_dict`, read with `weights_only=True` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (the authors' best_{{fold}}.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(
            f"{path}: refused to unpickle it with weights_only=True ({exc}). The authors' "
            "checkpoints are plain state_dicts of tensors; this file holds other Python objects, "
            "and this converter never executes code from checkpoint files."
        ) from exc
    except Exception as exc:  # zip/format errors from torch
        raise ConversionError(f"{path}: not a readable torch checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ConversionError(
            f"{path}: expected a state_dict (a mapping of parameter names to tensors), got "
            f"{type(state).__name__}."
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}")
    return dict(state)


def normalise_original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DataParallel's `module.` prefixes and map the old `well_*` names to `spot_*`."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        while new.startswith("module."):
            new = new[len("module.") :]
        new = re.sub(r"(^|\.)well", r"\1spot", new)
        if new in out:
            raise ConversionError(
                f"checkpoint keys {origin[new]!r} and {key!r} both mean {new!r}; the file mixes "
                "two naming schemes and cannot be converted unambiguously."
            )
        out[new] = value
        origin[new] = key
    return out


def _load_npy_safely(path: Path) -> np.ndarray:
    """`.npy` contents without executing pickles (see mclstexp_hub.data.safe_npy)."""
    try:
        return load_npy_safely(path)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


def read_gene_panel(path: str | os.PathLike) -> list[str]:
    """Ordered genes from a `.npy` (unicode or object array of str) or a text file (one a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene panel not found: {path} (.npy array or one gene per line)")
    if path.suffix == ".npy":
        array = _load_npy_safely(path).ravel()
        if not all(isinstance(g, str) for g in array.tolist()):
            raise ConversionError(f"{path}: the gene panel must contain strings only")
        genes = [str(g).strip() for g in array.tolist()]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ConversionError(
                f"--genes {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); give the "
                "panel as a .npy array or a text file with one gene per line."
            ) from exc
        genes = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not genes or any(not g for g in genes):
        raise ConversionError(f"{path}: the gene panel is empty or has empty entries")
    seen: set[str] = set()
    duplicates = sorted({g for g in genes if g in seen or seen.add(g)})
    if duplicates:
        raise ConversionError(f"{path}: duplicate genes {duplicates[:10]}; list each gene once")
    return genes


def read_reference_expression(
    path: str | os.PathLike, gene_names: Sequence[str], layout: str = "auto"
) -> np.ndarray:
    """(n_spots, n_genes) float32 in panel order from a `.npy` matrix or a `.csv`/`.tsv` table.

    The authors save `preprocessed_matrix.npy` as genes × spots; spots × genes is accepted too
    (`layout="auto"` decides from the panel size; pass "genes-by-spots" / "spots-by-genes" when
    both sides equal it). A table must name the panel's genes in its header (any column order).
    """
    path = Path(path)
    n_genes = len(gene_names)
    if not path.is_file():
        raise FileNotFoundError(f"reference expression not found: {path}")
    if path.suffix == ".npy":
        matrix = np.asarray(_load_npy_safely(path))
        if matrix.dtype == object or matrix.ndim != 2:
            raise ConversionError(
                f"{path}: expected a 2-D numeric matrix, got dtype {matrix.dtype} shape "
                f"{matrix.shape}."
            )
        if layout == "auto":
            rows_are_genes, cols_are_genes = matrix.shape[0] == n_genes, matrix.shape[1] == n_genes
            if rows_are_genes and cols_are_genes:
                raise ConversionError(
                    f"{path}: shape {matrix.shape} is ambiguous for a {n_genes}-gene panel; pass "
                    "--expression-layout genes-by-spots (the authors' layout) or spots-by-genes."
                )
            if not (rows_are_genes or cols_are_genes):
                raise ConversionError(
                    f"{path}: shape {matrix.shape} has no axis of length {n_genes} (the panel "
                    "size); it was preprocessed with a different gene panel."
                )
            layout = "genes-by-spots" if rows_are_genes else "spots-by-genes"
        if layout == "genes-by-spots":
            matrix = matrix.T
        elif layout != "spots-by-genes":
            raise ConversionError(f"unknown expression layout {layout!r}")
        if matrix.shape[1] != n_genes:
            raise ConversionError(
                f"{path}: {matrix.shape[1]} genes in layout {layout}, panel has {n_genes}."
            )
    elif path.suffix in (".csv", ".tsv", ".txt"):
        import pandas as pd

        table = pd.read_csv(path, sep="\t" if path.suffix != ".csv" else ",", index_col=0)
        missing = [g for g in gene_names if g not in table.columns]
        if missing and not [g for g in gene_names if g not in table.index]:
            table = table.T
            missing = []
        if missing:
            raise ConversionError(
                f"{path}: {len(missing)} panel genes absent from the table header, e.g. "
                f"{missing[:10]}; the table must have one column per panel gene."
            )
        matrix = table[list(gene_names)].to_numpy()
    else:
        raise ConversionError(f"{path}: unsupported expression file type (.npy, .csv, .tsv)")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.shape[0] == 0:
        raise ConversionError(f"{path}: no spots")
    if not np.isfinite(matrix).all():
        raise ConversionError(f"{path}: contains NaN or inf values")
    return matrix


def read_reference_positions(path: str | os.PathLike, n_spots: int) -> np.ndarray:
    """(n_spots, 2) int64 array coordinates (x, y) from `.npy` or a table with `x`,`y` columns.

    Non-integer values are truncated toward zero, as the authors' `position.long()` does.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference positions not found: {path}")
    if path.suffix == ".npy":
        values = np.asarray(_load_npy_safely(path))
    elif path.suffix in (".csv", ".tsv", ".txt"):
        import pandas as pd

        table = pd.read_csv(path, sep="\t" if path.suffix != ".csv" else ",")
        if {"x", "y"} <= set(table.columns):
            values = table[["x", "y"]].to_numpy()
        elif table.shape[1] == 2:
            values = table.to_numpy()
        else:
            raise ConversionError(
                f"{path}: needs columns named x and y (array coordinates), got "
                f"{list(table.columns)[:10]}."
            )
    else:
        raise ConversionError(f"{path}: unsupported positions file type (.npy, .csv, .tsv)")
    if values.dtype == object or values.ndim != 2 or values.shape[1] != 2:
        raise ConversionError(
            f"{path}: positions must be an (n_spots, 2) numeric array of (x, y); got shape "
            f"{values.shape}."
        )
    if values.shape[0] != n_spots:
        raise ConversionError(
            f"{path}: {values.shape[0]} positions for {n_spots} expression rows; both files must "
            "list the same spots in the same order."
        )
    if not np.isfinite(values.astype(np.float64)).all():
        raise ConversionError(f"{path}: positions contain NaN or inf")
    positions = np.trunc(values.astype(np.float64)).astype(np.int64)
    if positions.min() < 0:
        raise ConversionError(f"{path}: negative array coordinates ({positions.min()})")
    return positions


# ------------------------------------------------------------------------ the architecture
# Their image encoders are torchvision nets wrapped as nn.Sequential(*children[:-1]); timm's
# nets of the same name share torchvision's parameter names. Sequential index -> our prefix.
_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_SPOT_BLOCK_RULES = [
    (r"attn\.norm\.(weight|bias)", r"attention_norm.\1"),
    (r"attn\.fn\.to_qkv\.weight", "attention.qkv.weight"),
    (r"attn\.fn\.to_out\.0\.(weight|bias)", r"attention.out.\1"),
    (r"ff\.norm\.(weight|bias)", r"mlp_norm.\1"),
    (r"ff\.fn\.net\.0\.(weight|bias)", r"mlp_in.\1"),
    (r"ff\.fn\.net\.3\.(weight|bias)", r"mlp_out.\1"),
]
_HEAD_RULES = {"projection": "linear_in", "fc": "linear_out", "layer_norm": "norm"}
SPOT_TOWER_PREFIXES = ("x_embed.", "y_embed.", "spot_encoder.", "spot_projection.")


@dataclass
class OriginalArchitecture:
    """What the authors' state_dict says about their model, in our config's terms."""

    image_encoder: str  # timm name
    n_genes: int
    max_position: int
    image_feature_dim: int
    projection_dim: int
    spot_layers: int
    heads: int
    head_dim: int
    mlp_dim: int


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(
            f"the checkpoint has no {key!r}; it is not an mclSTExp_Attention state_dict "
            f"(first keys: {sorted(state)[:8]})."
        )
    return tuple(state[key].shape)


def detect_image_encoder(state: dict[str, torch.Tensor]) -> str:
    """timm name of the authors' image encoder, from its parameter names."""
    keys = [k[len("image_encoder.model.") :] for k in state if k.startswith("image_encoder.model.")]
    if not keys:
        raise ConversionError("the checkpoint has no image_encoder.model.* parameters")
    if any(k.startswith("0.denseblock") for k in keys):
        layers = {k.split(".")[2] for k in keys if k.startswith("0.denseblock3.")}
        if len(layers) == 24:
            return "densenet121"
        raise ConversionError(
            f"DenseNet with {len(layers)} layers in denseblock3 is not the authors' DenseNet-121 "
            "(24); only densenet121 checkpoints are supported."
        )
    if any(k.startswith("4.0.conv1.") for k in keys):
        bottleneck = any(k.startswith("4.0.conv3.") for k in keys)
        blocks = len({k.split(".")[1] for k in keys if k.startswith("6.")})
        name = {(False, 2): "resnet18", (True, 6): "resnet50", (True, 23): "resnet101"}.get(
            (bottleneck, blocks)
        )
        if name:
            return name
        raise ConversionError(f"unrecognised ResNet ({blocks} blocks in layer3)")
    raise ConversionError(
        "unsupported image encoder (only the authors' densenet121, res18, resnet50 and res101 "
        f"encoders are supported; ViT is not); first encoder keys: {sorted(keys)[:5]}"
    )


def infer_architecture(
    state: dict[str, torch.Tensor], heads: int = DEFAULT_HEADS, head_dim: int = DEFAULT_HEAD_DIM
) -> OriginalArchitecture:
    """Config values from parameter shapes; heads × head_dim must match `to_qkv`'s width."""
    max_position, n_genes = _shape(state, "x_embed.weight")
    if _shape(state, "y_embed.weight") != (max_position, n_genes):
        raise ConversionError("x_embed and y_embed have different shapes")
    projection_dim, image_feature_dim = _shape(state, "image_projection.projection.weight")
    layers = sorted({int(k.split(".")[1]) for k in state if re.match(r"spot_encoder\.\d+\.", k)})
    if layers != list(range(len(layers))):
        raise ConversionError(f"spot_encoder blocks are not numbered 0..n-1: {layers}")
    mlp_dim = n_genes
    if layers:
        inner3, dim = _shape(state, "spot_encoder.0.attn.fn.to_qkv.weight")
        if dim != n_genes:
            raise ConversionError(f"to_qkv takes {dim} features but the spot tokens have {n_genes}")
        if inner3 != 3 * heads * head_dim:
            raise ConversionError(
                f"to_qkv produces {inner3} = 3 x {inner3 // 3} features, but heads x head_dim = "
                f"{heads} x {head_dim} = {heads * head_dim}. Pass --heads and --head-dim as the "
                "model was trained (the authors' defaults are 8 and 64)."
            )
        mlp_dim = _shape(state, "spot_encoder.0.ff.fn.net.0.weight")[0]
    return OriginalArchitecture(
        image_encoder=detect_image_encoder(state),
        n_genes=n_genes,
        max_position=max_position,
        image_feature_dim=image_feature_dim,
        projection_dim=projection_dim,
        spot_layers=len(layers),
        heads=heads,
        head_dim=head_dim,
        mlp_dim=mlp_dim,
    )


def map_original_keys(
    state: dict[str, torch.Tensor], image_encoder: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Their parameter names → ours. Returns (mapped, keys that match no rule)."""
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        new = _map_key(key, image_encoder)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    return mapped, unknown


def _map_key(key: str, image_encoder: str) -> str | None:
    if key in ("x_embed.weight", "y_embed.weight"):
        return key
    if key.startswith("image_encoder.model."):
        rest = key[len("image_encoder.model.") :]
        index, _, tail = rest.partition(".")
        if image_encoder.startswith("densenet") and index == "0" and tail:
            return f"image_encoder.model.features.{tail}"
        if image_encoder.startswith("resnet") and index in _RESNET_CHILDREN and tail:
            return f"image_encoder.model.{_RESNET_CHILDREN[index]}.{tail}"
        return None
    match = re.fullmatch(r"spot_encoder\.(\d+)\.(.+)", key)
    if match:
        for pattern, replacement in _SPOT_BLOCK_RULES:
            if re.fullmatch(pattern, match.group(2)):
                tail = re.sub(pattern, replacement, match.group(2))
                return f"spot_encoder.{match.group(1)}.{tail}"
        return None
    match = re.fullmatch(r"(image|spot)_projection\.(projection|fc|layer_norm)\.(weight|bias)", key)
    if match:
        tower, layer, param = match.groups()
        return f"{tower}_projection.{_HEAD_RULES[layer]}.{param}"
    return None


def build_config(arch: OriginalArchitecture, gene_names: list[str], **overrides):
    """Our config for the authors' architecture (and the paper's retrieval settings)."""
    from mclstexp_hub import MclSTExpConfig

    if len(gene_names) != arch.n_genes:
        raise ConversionError(
            f"the gene panel lists {len(gene_names)} genes but the checkpoint's spot tower is "
            f"{arch.n_genes} wide; use the panel the model was trained with, in its original order."
        )
    values = {
        "gene_names": list(gene_names),
        "image_encoder": arch.image_encoder,
        # DenseNet: torchvision's `features` ends in BatchNorm without ReLU. ResNets end in their
        # own block's ReLU in both libraries, so there is nothing to remove.
        "image_encoder_final_activation": not arch.image_encoder.startswith("densenet"),
        "projection_dim": arch.projection_dim,
        "spot_encoder_layers": arch.spot_layers,
        "spot_encoder_heads": arch.heads,
        "spot_encoder_head_dim": arch.head_dim,
        "spot_encoder_mlp_dim": None if arch.mlp_dim == arch.n_genes else arch.mlp_dim,
        "use_position_embeddings": True,
        "max_position": arch.max_position,
        "dropout": 0.0,
        "contrastive_temperature": 1.0,
        "retrieval_distance": "l1",
        "retrieval_weighting": "inverse_square",
        "patch_size": 224,
        "pixel_scaling": "unit",
        "expression_transform": AUTHORS_TRANSFORM,
        "expression_units": AUTHORS_UNITS,
    }
    values.update(overrides)
    config = MclSTExpConfig(**values)
    return config


def load_into_model(config, mapped: dict[str, torch.Tensor], unknown: Sequence[str] = ()):
    """Our model with the mapped weights; unknown, missing or mis-shaped keys are an error."""
    from mclstexp_hub import MclSTExpModel

    model = MclSTExpModel(config)
    expected = model.state_dict()
    unknown = sorted(set(unknown) | {k for k in mapped if k not in expected})
    missing = sorted(k for k in expected if k not in mapped)
    wrong = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in mapped
        if k in expected and tuple(mapped[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_preview(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_preview(wrong)}")
    if problems:
        raise ConversionError(
            "the checkpoint does not match the authors' mclSTExp_Attention as understood by this "
            "converter (after stripping 'module.' and renaming 'well' to 'spot'): "
            + "; ".join(problems)
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)
    return model.eval()


def _preview(items: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------------------- conversion
@dataclass
class ConversionReport:
    """What was written, with the sizes a user weighs when choosing a variant."""

    out_dir: Path
    image_encoder: str
    n_genes: int
    position_rows_original: int
    position_rows_saved: int | None  # None when the spot tower was dropped
    inference_only: bool
    bank_spots: int
    bank_sections: list[str]
    excluded_sections: list[str]
    file_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.file_sizes.values())

    def format(self) -> str:
        variant = (
            "inference-only (image tower + projection + spot bank)"
            if self.inference_only
            else f"full, position tables {self.position_rows_saved:,} rows"
            + (" (sliced)" if self.position_rows_saved != self.position_rows_original else "")
        )
        lines = [
            f"wrote {self.out_dir}",
            f"  encoder {self.image_encoder}, {self.n_genes} genes, {variant}",
            f"  spot bank: {self.bank_spots:,} spots"
            + (f" from {len(self.bank_sections)} section(s)" if self.bank_sections else "")
            + (f", excluded {self.excluded_sections}" if self.excluded_sections else "")
            if self.bank_spots
            else "  spot bank: none (the model embeds but cannot predict until a bank is attached)",
        ]
        for name, size in sorted(self.file_sizes.items(), key=lambda kv: -kv[1]):
            if size >= 1024:
                lines.append(f"  {size / 1e6:10.2f} MB  {name}")
        lines.append(f"  {self.total_bytes / 1e6:10.2f} MB  total")
        return "\n".join(lines)


def _section_name(path: Path) -> str:
    # The authors' layout is .../{section}/preprocessed_matrix.npy: the folder names the section.
    return path.parent.name if path.stem == "preprocessed_matrix" else path.stem


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    genes: str | os.PathLike,
    out: str | os.PathLike,
    *,
    reference_expression: Sequence[str | os.PathLike] = (),
    reference_positions: Sequence[str | os.PathLike] = (),
    section_names: Sequence[str] | None = None,
    exclude_sections: Sequence[str] = (),
    expression_layout: str = "auto",
    slice_positions: bool = False,
    max_position: int | None = None,
    inference_only: bool = False,
    heads: int = DEFAULT_HEADS,
    head_dim: int = DEFAULT_HEAD_DIM,
    retrieval_k: int = 200,
    bank_batch_size: int = AUTHORS_BANK_BATCH_SIZE,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert one `best_{fold}.pt` into a checkpoint directory `out` (written atomically)."""
    from mclstexp_hub.outputs import check_output, is_checkpoint_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a checkpoint folder; choose another --out.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    # --out may neither be nor hold an input (the authors' .pt, the panel, the references), and
    # --overwrite replaces only a checkpoint folder this tool wrote.
    inputs = [checkpoint, genes, *reference_expression, *reference_positions]
    check_output(out, overwrite=overwrite, inputs=inputs, is_ours=is_checkpoint_folder,
                 what="checkpoint folder")
    for option, value in (("--heads", heads), ("--head-dim", head_dim),
                          ("--retrieval-k", retrieval_k), ("--bank-batch-size", bank_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConversionError(f"{option} must be a positive integer; got {value!r}.")
    if max_position is not None and (not isinstance(max_position, int) or max_position < 1):
        raise ConversionError(f"--max-position must be a positive integer; got {max_position!r}.")
    if len(reference_expression) != len(reference_positions):
        raise ConversionError(
            f"{len(reference_expression)} --reference-expression file(s) but "
            f"{len(reference_positions)} --reference-positions file(s); give one positions file "
            "per expression file, in the same order."
        )
    if slice_positions and not reference_expression and max_position is None:
        raise ConversionError(
            "--slice-positions keeps the position-table rows the reference coordinates use, so it "
            "needs --reference-expression/--reference-positions (or an explicit --max-position)."
        )
    if inference_only and not reference_expression:
        raise ConversionError(
            "--inference-only drops the spot tower, so the spot bank is all the checkpoint can "
            "predict from: pass --reference-expression/--reference-positions to build it."
        )

    gene_names = read_gene_panel(genes)
    state = normalise_original_keys(load_original_state_dict(checkpoint))
    arch = infer_architecture(state, heads=heads, head_dim=head_dim)
    config = build_config(arch, gene_names, retrieval_k=retrieval_k)
    mapped, unknown = map_original_keys(state, arch.image_encoder)
    model = load_into_model(config, mapped, unknown)

    # Reference spots, concatenated in the given order (the authors' ConcatDataset order).
    names = list(section_names) if section_names else [_section_name(Path(p)) for p in reference_expression]
    if len(names) != len(reference_expression):
        raise ConversionError(f"{len(names)} section names for {len(reference_expression)} files")
    expressions, positions, section_ids = [], [], []
    for name, expr_path, pos_path in zip(names, reference_expression, reference_positions, strict=True):
        expr = read_reference_expression(expr_path, gene_names, expression_layout)
        expressions.append(expr)
        positions.append(read_reference_positions(pos_path, expr.shape[0]))
        section_ids.extend([name] * expr.shape[0])
    unknown_excluded = sorted(set(exclude_sections) - set(names))
    if unknown_excluded:
        raise ConversionError(f"--exclude-sections {unknown_excluded} are not among {names}")

    used_max = int(max(p.max() for p in positions)) if positions else None
    if used_max is not None and used_max >= arch.max_position:
        raise ConversionError(
            f"reference positions reach {used_max}, beyond the checkpoint's {arch.max_position}-row "
            "position tables; the positions do not belong to this model."
        )
    bank = None
    if expressions:
        all_expr = torch.from_numpy(np.concatenate(expressions))
        all_pos = torch.from_numpy(np.concatenate(positions))
        with torch.no_grad():
            bank = model.build_spot_bank(
                all_expr,
                all_pos,
                batch_size=bank_batch_size,
                section_ids=section_ids,
                metadata={
                    "source": f"converted from the authors' checkpoint {Path(checkpoint).name}",
                    "reference_files": [str(Path(p).name) for p in reference_expression],
                    "batching": (
                        f"consecutive runs of {bank_batch_size} spots over the concatenation of "
                        "the reference sections in the order given (the authors' evaluation "
                        "DataLoader over ConcatDataset, shuffle=False)"
                        + ("; excluded sections were embedded in their batches, then removed"
                           if exclude_sections else "")
                    ),
                    "excluded_sections": sorted(exclude_sections),
                },
                attach=False,
            )
        if exclude_sections:
            keep = torch.tensor([s not in set(exclude_sections) for s in section_ids])
            if not keep.any():
                raise ConversionError("--exclude-sections removes every reference spot")
            bank = _subset_bank(bank, keep)

    # Shrinking.
    saved_rows: int | None = arch.max_position
    if slice_positions or max_position is not None:
        rows = max_position if max_position is not None else used_max + 1
        if used_max is not None and rows <= used_max:
            raise ConversionError(
                f"--max-position {rows} is too small for the reference positions (max {used_max})"
            )
        if rows > arch.max_position:
            raise ConversionError(f"--max-position {rows} exceeds the checkpoint's {arch.max_position}")
        model = _with_config(model, max_position=rows, slice_rows=rows)
        saved_rows = rows
    if inference_only:
        model = _with_config(model, has_spot_encoder=False)
        saved_rows = None
    if bank is not None:
        model.attach_spot_bank(bank)

    report = ConversionReport(
        out_dir=out,
        image_encoder=arch.image_encoder,
        n_genes=arch.n_genes,
        position_rows_original=arch.max_position,
        position_rows_saved=saved_rows,
        inference_only=inference_only,
        bank_spots=len(bank) if bank is not None else 0,
        bank_sections=[n for n in names if n not in set(exclude_sections)],
        excluded_sections=sorted(exclude_sections),
    )
    report.file_sizes = _save_atomically(model, out, overwrite, inputs)
    _verify_saved(out, model)
    return report


def _subset_bank(bank, keep: torch.Tensor):
    from mclstexp_hub import SpotBank

    index = keep.nonzero().squeeze(1)
    return SpotBank(
        embeddings=bank.embeddings[index],
        expression=bank.expression[index],
        gene_names=bank.gene_names,
        positions=bank.positions[index] if bank.positions is not None else None,
        section_ids=[bank.section_ids[i] for i in index.tolist()] if bank.section_ids else [],
        patient_ids=[bank.patient_ids[i] for i in index.tolist()] if bank.patient_ids else [],
        metadata=bank.metadata,
    )


def _with_config(model, slice_rows: int | None = None, **changes):
    """A copy of `model` with config changes; parameters it no longer has are dropped."""
    import copy

    from mclstexp_hub import MclSTExpModel

    config = copy.deepcopy(model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    new = MclSTExpModel(config)
    state = model.state_dict()
    if slice_rows is not None:
        for key in ("x_embed.weight", "y_embed.weight"):
            state[key] = state[key][:slice_rows].clone()
    target = new.state_dict()
    new.load_state_dict({k: v for k, v in state.items() if k in target}, strict=True)
    return new.eval()


def _save_atomically(
    model, out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()
) -> dict[str, int]:
    """The complete checkpoint (weights, bank, processor, pipeline code), staged then renamed."""
    from mclstexp_hub.hub.checkpoint import write_checkpoint

    try:
        write_checkpoint(model, out, overwrite=overwrite, inputs=inputs)
    except FileExistsError as exc:
        raise FileExistsError(f"{out} appeared while converting; not overwriting it ({exc})") from exc
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def _verify_saved(out: Path, model) -> None:
    """Reload the written weights and compare them bit for bit with the converted ones."""
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    expected = model.state_dict()
    differing = [k for k, v in expected.items() if k not in saved or not torch.equal(saved[k], v)]
    if differing:
        raise ConversionError(f"{out}: written weights differ from the converted ones: {differing[:5]}")


# ----------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> ConversionReport:
    """Convert with the options parsed by `build_parser` (also `mclstexp convert`)."""
    return convert_checkpoint(
        args.checkpoint,
        args.genes,
        args.out,
        reference_expression=args.reference_expression,
        reference_positions=args.reference_positions,
        section_names=args.section_names,
        exclude_sections=args.exclude_sections,
        expression_layout=args.expression_layout,
        slice_positions=args.slice_positions,
        max_position=args.max_position,
        inference_only=args.inference_only,
        heads=args.heads,
        head_dim=args.head_dim,
        retrieval_k=args.retrieval_k,
        bank_batch_size=args.bank_batch_size,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{TOOL}: %(message)s")
    try:
        report = run(args)
    except (ValueError, OSError) as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
