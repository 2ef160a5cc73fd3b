"""Bad inputs to `mclstexp convert` (the authors' `best_{fold}.pt` → a checkpoint folder).

The authors'-format checkpoint is the small one of tests/test_conversion.py (resnet18 encoder,
20 genes, 2 × 8 heads, one attention layer), written once per session and copied per case.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .harness import Case

N_GENES = 20


@lru_cache(maxsize=1)
def _authors_checkpoint() -> Path:
    """A small checkpoint in the authors' layout (cached for the session)."""
    import torch
    from test_conversion import AuthorsModel, _randomise

    torch.manual_seed(1)
    model = _randomise(AuthorsModel(encoder="resnet18", heads=2, head_dim=8, layers=1), seed=2)
    path = Path(tempfile.mkdtemp(prefix="mclstexp-authors-")) / "best_1.pt"
    torch.save(model.state_dict(), path)
    return path


def _inputs(work: Path) -> tuple[Path, Path]:
    folder = work / "authors"
    folder.mkdir()
    pt = shutil.copy2(_authors_checkpoint(), folder / "best_1.pt")
    genes = work / "genes.txt"
    genes.write_text("\n".join(f"GENE{i}" for i in range(N_GENES)) + "\n")
    return Path(pt), genes


def _convert(pt, genes, out, *extra) -> list[str]:
    return ["convert", "--checkpoint", pt, "--genes", genes, "--out", out, "--heads", "2",
            "--head-dim", "8", *extra]


def _ok(work, assets):
    pt, genes = _inputs(work)
    return _convert(pt, genes, work / "out", "--retrieval-k", "4")


def _check_ok(work, assets):
    from mclstexp_hub.outputs import is_checkpoint_folder

    assert is_checkpoint_folder(work / "out")


def _out_holds_pt(work, assets):
    pt, genes = _inputs(work)
    return _convert(pt, genes, pt.parent, "--overwrite")


def _out_is_pt(work, assets):
    pt, genes = _inputs(work)
    return _convert(pt, genes, pt, "--overwrite")


def _out_foreign(work, assets):
    pt, genes = _inputs(work)
    (work / "out").mkdir()
    (work / "out" / "notes.txt").write_text("mine")
    return _convert(pt, genes, work / "out", "--overwrite")


def _pt_missing(work, assets):
    _, genes = _inputs(work)
    return _convert(work / "nope.pt", genes, work / "out")


def _pt_not_checkpoint(work, assets):
    pt, genes = _inputs(work)
    pt.write_bytes(b"this is not a torch checkpoint" * 20)
    return _convert(pt, genes, work / "out")


class _Payload:
    """Pickles to a call that creates a file if it is ever executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


def _pt_pickle_payload(work, assets):
    import torch

    pt, genes = _inputs(work)
    torch.save({"x_embed.weight": torch.zeros(2, 2), "evil": _Payload(work / "PWNED")}, pt)
    return _convert(pt, genes, work / "out")


def _check_no_code_ran(work, assets):
    assert not (work / "PWNED").exists()


def _genes_binary(work, assets):
    pt, genes = _inputs(work)
    genes.write_bytes(b"\xff\xfe\x00\x81" * 64)
    return _convert(pt, genes, work / "out")


def _genes_empty(work, assets):
    pt, genes = _inputs(work)
    genes.write_text("")
    return _convert(pt, genes, work / "out")


def _reference_wrong_shape(work, assets):
    pt, genes = _inputs(work)
    np.save(work / "expr.npy", np.ones((7, N_GENES + 3), dtype=np.float32))
    np.save(work / "pos.npy", np.zeros((7, 2), dtype=np.int64))
    return _convert(pt, genes, work / "out", "--reference-expression", work / "expr.npy",
                    "--reference-positions", work / "pos.npy")


def _retrieval_k_zero(work, assets):
    pt, genes = _inputs(work)
    return _convert(pt, genes, work / "out", "--retrieval-k", "0")


def _bank_batch_zero(work, assets):
    pt, genes = _inputs(work)
    return _convert(pt, genes, work / "out", "--bank-batch-size", "0")


CASES = [
    Case("convert-ok", "convert", "cache", "a small authors' checkpoint converts (control)", _ok,
         code=0, leaves=("out",), check=_check_ok, verdict="converted correctly"),
    Case("convert-out-holds-pt", "convert", "overwrite",
         "--out = the folder holding the authors' .pt, --overwrite", _out_holds_pt,
         ("contains the input", "best_1.pt")),
    Case("convert-out-is-pt", "convert", "overwrite", "--out = the .pt itself", _out_is_pt,
         ("is a file",)),
    Case("convert-out-foreign", "convert", "overwrite", "--overwrite over a foreign folder",
         _out_foreign, ("not a checkpoint folder written by mclstexp",)),
    Case("convert-pt-missing", "convert", "messages", "--checkpoint names no file", _pt_missing,
         ("nope.pt",)),
    Case("convert-pt-not-checkpoint", "convert", "decode", "a .pt of text bytes",
         _pt_not_checkpoint, ("best_1.pt", "torch checkpoint")),
    Case("convert-pt-pickle-payload", "convert", "decode",
         "a .pt whose pickle would run code: refused by weights_only", _pt_pickle_payload,
         ("best_1.pt", "weights_only"), check=_check_no_code_ran),
    Case("convert-genes-binary", "convert", "decode", "a gene panel of binary bytes",
         _genes_binary, ("genes.txt", "utf-8")),
    Case("convert-genes-empty", "convert", "messages", "an empty gene panel", _genes_empty,
         ("genes.txt", "empty")),
    Case("convert-reference-wrong-shape", "convert", "messages",
         "reference expression .npy with no axis of the panel's size", _reference_wrong_shape,
         ("expr.npy", "shape")),
    Case("convert-retrieval-k-zero", "convert", "zeros", "--retrieval-k 0", _retrieval_k_zero,
         ("--retrieval-k",)),
    Case("convert-bank-batch-size-zero", "convert", "zeros", "--bank-batch-size 0",
         _bank_batch_zero, ("--bank-batch-size",)),
]
