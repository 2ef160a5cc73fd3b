"""Bad inputs to `mclstexp evaluate`, `domains`, `push` and `card`."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from .harness import Case


# ------------------------------------------------------------------ evaluate
def _evaluate(assets, out, *extra, model=None, dataset=None) -> list[str]:
    return ["evaluate", "--model", model or assets.checkpoint, "--dataset",
            dataset or assets.dataset, "--out", out, "--quiet", *extra]


def _eval_overlap(work, assets):
    return _evaluate(assets, work / "eval", "--sections", "B1")


def _eval_ok(work, assets):
    return _evaluate(assets, work / "eval", "--sections", "B1", "--allow-bank-overlap", "--k",
                     "3", "--n-map-genes", "0")


def _check_eval(work, assets):
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["retrieval"]["k"] == 3 and metrics["sections"] == ["B1"]
    assert not list((work / "eval").glob("best_genes_*.png"))  # --n-map-genes 0 was used


def _eval_dataset_missing(work, assets):
    return _evaluate(assets, work / "eval", dataset=work / "no_such_dataset")


def _eval_k(value):
    return lambda work, assets: _evaluate(assets, work / "eval", "--allow-bank-overlap", "--k",
                                          value)


def _eval_batch_zero(work, assets):
    return _evaluate(assets, work / "eval", "--allow-bank-overlap", "--batch-size", "0")


def _eval_out_foreign(work, assets):
    (work / "eval").mkdir()
    (work / "eval" / "notes.txt").write_text("mine")
    return _evaluate(assets, work / "eval", "--allow-bank-overlap", "--overwrite")


def _eval_out_is_dataset(work, assets):
    dataset = assets.copy("dataset", work)
    return _evaluate(assets, dataset, "--allow-bank-overlap", "--overwrite", dataset=dataset)


def _eval_other_architecture(work, assets):
    ckpt = assets.copy("checkpoint", work)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(config))
    return _evaluate(assets, work / "eval", "--allow-bank-overlap", model=ckpt)


def _eval_unknown_section(work, assets):
    return _evaluate(assets, work / "eval", "--sections", "Z9")


# ------------------------------------------------------------------ domains
@lru_cache(maxsize=1)
def _prediction() -> Path:
    """A pred.h5ad of B1 written by `mclstexp predict` (once per session)."""
    import contextlib
    import io

    from mclstexp_hub.cli import main

    out = Path(tempfile.mkdtemp(prefix="mclstexp-pred-")) / "pred.h5ad"
    root = Path(tempfile.gettempdir())
    assets = _ASSETS[0]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", "--model", str(assets.checkpoint), "--image", str(assets.image),
                     "--spots", str(assets.spots_csv), "--out", str(out), "--quiet",
                     "--device", "cpu"])
    assert code == 0 and out.is_file() and root.exists()
    return out


_ASSETS: list = []


def _pred(work, assets) -> Path:
    _ASSETS[:] = [assets]
    return Path(shutil.copy2(_prediction(), work / "pred.h5ad"))


def _domains_ok(work, assets):
    return ["domains", _pred(work, assets), "--n-clusters", "2", "--n-pcs", "1", "--seed", "0"]


def _check_domains(work, assets):
    report = json.loads((work / "pred_domains.json").read_text())
    assert report["n_pcs"] == 1 and report["seed"] == 0 and report["n_clusters"] == 2


def _domains_missing(work, assets):
    return ["domains", work / "nope.h5ad", "--n-clusters", "2"]


def _domains_corrupt(work, assets):
    pred = _pred(work, assets)
    pred.write_bytes(pred.read_bytes()[:300])
    return ["domains", pred, "--n-clusters", "2"]


def _domains_no_spatial(work, assets):
    import anndata as ad

    pred = _pred(work, assets)
    adata = ad.read_h5ad(pred)
    del adata.obsm["spatial"]
    adata.write_h5ad(pred)
    return ["domains", pred, "--n-clusters", "2"]


def _labels(content: bytes):
    def make(work, assets):
        pred = _pred(work, assets)
        (work / "labels.csv").write_bytes(content)
        return ["domains", pred, "--n-clusters", "2", "--labels", work / "labels.csv"]

    return make


def _domains_option(option, value):
    return lambda work, assets: ["domains", _pred(work, assets), "--n-clusters", "2", option,
                                 value] if option != "--n-clusters" else [
        "domains", _pred(work, assets), "--n-clusters", value]


def _domains_out_dir_file(work, assets):
    pred = _pred(work, assets)
    (work / "maps").write_text("a file")
    return ["domains", pred, "--n-clusters", "2", "--out-dir", work / "maps"]


def _domains_foreign_overwrite(work, assets):
    pred = _pred(work, assets)
    (work / "pred_domains.csv").write_text("someone's table")
    return ["domains", pred, "--n-clusters", "2", "--overwrite"]


# ------------------------------------------------------------------ push / card
def _push_missing(work, assets):
    return ["push", work / "no_checkpoint", "org/name"]


def _push_not_checkpoint(work, assets):
    (work / "folder").mkdir()
    (work / "folder" / "notes.txt").write_text("not a checkpoint")
    return ["push", work / "folder", "org/name"]


def _card_results(content: bytes):
    def make(work, assets):
        (work / "results").mkdir()
        (work / "results" / "summary.json").write_bytes(content)
        return ["card", work / "results", "--out", work / "README.md"]

    return make


def _card_results_missing(work, assets):
    return ["card", work / "no_results", "--out", work / "README.md"]


def _card_out_is_summary(work, assets):
    (work / "results").mkdir()
    (work / "results" / "summary.json").write_text("{}")
    return ["card", work / "results", "--out", work / "results" / "summary.json"]


CASES = [
    Case("evaluate-bank-overlap", "evaluate", "modes", "held-out section that is in the bank",
         _eval_overlap, ("spot bank", "--allow-bank-overlap")),
    Case("evaluate-explicit-values-used", "evaluate", "zeros",
         "--k 3 and --n-map-genes 0 are used as given", _eval_ok, code=0, leaves=("eval",),
         check=_check_eval, verdict="used as given"),
    Case("evaluate-dataset-missing", "evaluate", "messages", "--dataset names no folder",
         _eval_dataset_missing, ("no_such_dataset",)),
    Case("evaluate-k-zero", "evaluate", "zeros", "--k 0", _eval_k("0"), ("--k",)),
    Case("evaluate-k-too-large", "evaluate", "modes", "--k larger than the bank",
         _eval_k("500"), ("--k 500", "56")),
    Case("evaluate-batch-size-zero", "evaluate", "zeros", "--batch-size 0", _eval_batch_zero,
         ("--batch-size",)),
    Case("evaluate-out-foreign", "evaluate", "overwrite", "--overwrite over a foreign folder",
         _eval_out_foreign, ("not a evaluation folder",)),
    Case("evaluate-out-is-dataset", "evaluate", "overwrite", "--out = the input dataset",
         _eval_out_is_dataset, ("input",)),
    Case("evaluate-other-architecture", "evaluate", "messages", "model_type bert",
         _eval_other_architecture, ("model_type",)),
    Case("evaluate-unknown-section", "evaluate", "messages", "--sections Z9",
         _eval_unknown_section, ("Z9",)),
    Case("domains-explicit-values-used", "domains", "zeros",
         "--n-pcs 1 --seed 0 are used and recorded", _domains_ok, code=0,
         leaves=("pred_domains.csv", "pred_domains.json", "pred_domains.png"), check=_check_domains, verdict="used as given"),
    Case("domains-missing", "domains", "messages", "prediction file absent", _domains_missing,
         ("nope.h5ad",)),
    Case("domains-corrupt", "domains", "decode", "a pred.h5ad cut short", _domains_corrupt,
         ("pred.h5ad", "AnnData")),
    Case("domains-no-spatial", "domains", "messages", "a .h5ad without obsm['spatial']",
         _domains_no_spatial, ("pred.h5ad", "obsm['spatial']")),
    Case("domains-labels-empty", "domains", "decode", "--labels file empty", _labels(b""),
         ("--labels", "labels.csv")),
    Case("domains-labels-binary", "domains", "decode", "--labels file of binary bytes",
         _labels(b"\xff\xfe\x00\x81\x00" * 50), ("--labels", "labels.csv")),
    Case("domains-labels-no-label-column", "domains", "messages", "--labels without `label`",
         _labels(b"spot_id,region\n1x1,a\n"), ("labels.csv", "label")),
    Case("domains-n-pcs-zero", "domains", "zeros", "--n-pcs 0", _domains_option("--n-pcs", "0"),
         ("--n-pcs",)),
    Case("domains-n-clusters-zero", "domains", "zeros", "--n-clusters 0",
         _domains_option("--n-clusters", "0"), ("--n-clusters",)),
    Case("domains-out-dir-is-file", "domains", "paths", "--out-dir names a file",
         _domains_out_dir_file, ("maps", "file")),
    Case("domains-foreign-overwrite", "domains", "overwrite",
         "--overwrite over a CSV not written by domains", _domains_foreign_overwrite,
         ("pred_domains.csv", "not written")),
    Case("push-missing-folder", "push", "messages", "push a folder that does not exist",
         _push_missing, ("no_checkpoint",)),
    Case("push-not-checkpoint", "push", "messages", "push a folder without config.json",
         _push_not_checkpoint, ("folder",)),
    Case("card-results-invalid-json", "card", "decode", "summary.json that is not JSON",
         _card_results(b"{ not json"), ("summary.json", "JSON")),
    Case("card-results-binary", "card", "decode", "summary.json of binary bytes",
         _card_results(b"\xff\xfe\x00\x81" * 20), ("summary.json",)),
    Case("card-results-not-object", "card", "decode", "summary.json that is a list",
         _card_results(b"[1, 2]"), ("summary.json", "object")),
    Case("card-results-missing", "card", "messages", "RESULTS_DIR absent",
         _card_results_missing, ("no_results",)),
    Case("card-out-is-summary", "card", "overwrite", "--out = the summary.json it reads",
         _card_out_is_summary, ("input",)),
]
