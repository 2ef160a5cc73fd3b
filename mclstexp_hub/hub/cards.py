"""Model cards for mclSTExp checkpoints, generated from *measured* benchmark results.

`render_card(dataset, results_dir)` fills `model_cards/template.md` (Jinja, rendered by
`huggingface_hub.ModelCard.from_template`) with what we know about a dataset and with the
figures of a benchmark results directory. Only measured figures enter the YAML `model-index`,
and only those of the method the card describes (`mclstexp`); baselines measured in the same
run appear in the text, and the paper's headline numbers appear in the text, labelled as the
paper's, with its split.

A results directory is what `mclstexp benchmark --out RESULTS` writes; the card reads its
`summary.json` (dataset, split "section"/"patient", profile and its description, expression
units, sections, folds, and per method: label, description, per-fold and mean metrics
pcc_acg / pcc_heg / pcc_hvg / mse / mae, plus command and machine).
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..presets import DatasetPreset, list_presets

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "model_cards" / "template.md"
DEFAULT_ORG = "mclstexp-hub"
TASK_TYPE = "spatial-gene-expression"
TASK_NAME = "Spatial gene expression prediction from H&E histology"
CARD_TAGS = [
    "spatial-transcriptomics",
    "histology",
    "pathology",
    "gene-expression",
    "contrastive-learning",
    "mclstexp",
    "custom_code",
]
METRICS = {
    # benchmark key: (model-index metric type, readable name)
    "pcc_acg": ("pearsonr", "PCC(ACG): mean per-gene Pearson r over all panel genes"),
    "pcc_heg": ("pearsonr", "PCC(HEG): mean per-gene Pearson r over the 50 highest-expressed genes"),
    "pcc_hvg": ("pearsonr", "PCC(HVG): mean per-gene Pearson r over the 50 most variable genes"),
    "mse": ("mse", "MSE"),
    "mae": ("mae", "MAE"),
}
TABLE_METRICS = {
    "pcc_acg": "PCC(ACG)", "pcc_heg": "PCC(HEG)", "pcc_hvg": "PCC(HVG)", "mse": "MSE", "mae": "MAE",
    "n_nan_genes": "NaN genes dropped",
}
PAPER_CITATION = """@article{min2024multimodal,
  title={Multimodal contrastive learning for spatial gene expression prediction using histology images},
  author={Min, Wenwen and Shi, Zhiceng and Zhang, Jun and Wan, Jun and Wang, Changmiao},
  journal={Briefings in Bioinformatics},
  volume={25},
  number={6},
  pages={bbae551},
  year={2024},
  doi={10.1093/bib/bbae551}
}"""
DEFAULT_UNITS = "log10(1 + 1e4 * count / panel total)"
DEFAULT_TRANSFORM = "log10_cp10k_panel"


@dataclass(frozen=True)
class DatasetInfo:
    """What the card says about one of the paper's datasets (facts from the paper and data)."""

    key: str
    title: str
    short: str
    platform: str
    source: str
    data_citation: str
    sections: str
    n_genes: int
    panel_file: str
    retrieval_k: int
    paper_epochs: int
    paper_acg: float
    paper_heg: float
    paper_split: str
    patient_structure: str


def _dataset_info(preset: DatasetPreset) -> DatasetInfo:
    """The card's view of a registry preset (mclstexp_hub.presets holds the facts)."""
    return DatasetInfo(
        key=preset.name,
        title=preset.title,
        short=preset.short,
        platform=preset.platform,
        source=preset.source,
        data_citation=preset.data_citation,
        sections=preset.sections_text,
        n_genes=preset.n_genes,
        panel_file=preset.gene_list_file,
        retrieval_k=preset.retrieval_k,
        paper_epochs=preset.epochs,
        paper_acg=preset.paper_acg,
        paper_heg=preset.paper_heg,
        paper_split=preset.paper_split,
        patient_structure=preset.patient_structure,
    )


DATASETS: dict[str, DatasetInfo] = {p.name: _dataset_info(p) for p in list_presets()}


CARD_METHOD = "mclstexp"
"""The benchmark method whose figures describe the checkpoint (model-index)."""
SPLITS = {"section": "leave-one-section-out", "patient": "leave-one-patient-out"}


@dataclass
class ResultsSummary:
    """The parts of a benchmark's summary.json a card shows."""

    path: Path
    dataset: str
    split: str  # "section" | "patient" (the benchmark's names)
    profile: str
    profile_description: str
    sections: list[str]
    folds: list[dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    expression_units: str | None = None
    command: str | None = None
    machine: str | None = None
    date: str | None = None

    @property
    def split_name(self) -> str:
        return SPLITS.get(self.split, self.split)

    @property
    def mean(self) -> dict[str, Any]:
        return self.methods[CARD_METHOD]["mean"]

    @property
    def heldout_sections(self) -> list[str]:
        """Sections the mclSTExp figures were measured on (the folds actually run)."""
        folds = self.methods[CARD_METHOD].get("per_fold") or self.folds
        return [str(s) for fold in folds for s in fold.get("held_out", [])]


def load_results(results_dir: str | os.PathLike) -> ResultsSummary:
    """Read and check RESULTS_DIR/summary.json as written by `mclstexp benchmark`."""
    root = Path(results_dir)
    path = root / "summary.json" if root.is_dir() else root
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark summary at {path}: run `mclstexp benchmark --out {root}` to completion "
            "(summary.json is written last), or generate a card without results (omit "
            "RESULTS_DIR)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rerun `mclstexp benchmark` to "
                         "write it again.") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a `mclstexp benchmark` summary), got "
                         f"{type(data).__name__}.")
    for key in ("dataset", "split", "methods", "sections", "folds"):
        if key not in data:
            raise ValueError(f"{path}: missing '{key}'; is this a `mclstexp benchmark` summary?")
    if data["dataset"] not in DATASETS:
        raise ValueError(f"{path}: unknown dataset {data['dataset']!r}; known: {sorted(DATASETS)}")
    methods = data["methods"]
    if CARD_METHOD not in methods:
        raise ValueError(
            f"{path}: no '{CARD_METHOD}' results (methods: {sorted(methods)}); a model card "
            "reports the mclSTExp method itself, so benchmark it (--methods mclstexp ...)."
        )
    for key, method in methods.items():
        if "mean" not in method or "label" not in method:
            raise ValueError(f"{path}: method {key!r} lacks 'mean' or 'label'")
    return ResultsSummary(
        path=path,
        dataset=data["dataset"],
        split=str(data["split"]),
        profile=str(data.get("profile", "?")),
        profile_description=str(data.get("profile_description", "")),
        sections=[str(x) for x in data["sections"]],
        folds=list(data["folds"]),
        methods=methods,
        expression_units=data.get("expression_units"),
        command=data.get("command"),
        machine=data.get("machine"),
        date=data.get("date"),
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eval_results(summary: ResultsSummary, info: DatasetInfo, dataset_id: str) -> list[EvalResult]:
    """model-index entries: the measured means of the mclSTExp method, nothing else."""
    split = (
        f"{summary.split_name}, mean over held-out sections "
        f"{', '.join(summary.heldout_sections)}; training profile {summary.profile}"
    )
    out = []
    for key, (metric_type, metric_name) in METRICS.items():
        value = summary.mean.get(key)
        if not _finite(value):
            continue
        out.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_NAME,
                dataset_type=dataset_id,
                dataset_name=info.title,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(float(value), 4),
            )
        )
    return out


def results_table(summary: ResultsSummary) -> str:
    """Markdown: metric rows x method columns (means over held-out sections), then the folds."""
    keys = list(summary.methods)
    lines = ["| metric | " + " | ".join(summary.methods[k]["label"] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for metric, label in TABLE_METRICS.items():
        values = [summary.methods[k]["mean"].get(metric) for k in keys]
        if not any(_finite(v) for v in values):
            continue
        fmt = "{:.0f}" if metric == "n_nan_genes" else "{:.4f}"
        cells = [fmt.format(float(v)) if _finite(v) else "n/a" for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Folds (held out → trained on):", ""]
    lines += [f"- {', '.join(f['held_out'])} → {', '.join(f['train'])}" for f in summary.folds]
    return "\n".join(lines)


def render_card(
    dataset: str | None,
    results_dir: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    license: str = "mit",
    dataset_id: str | None = None,
    template: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    config: Any | None = None,
    has_spot_bank: bool | None = None,
    no_results_reason: str | None = None,
) -> str:
    """The model card text (YAML front matter + Markdown).

    dataset: her2st / cscc / alex10x, or None for a checkpoint of unknown provenance. With
        `results_dir` (a `mclstexp benchmark` output), its dataset must agree.
    checkpoint: a checkpoint directory whose config (genes, units, k) and spot bank (size,
        sections) the card describes; `config` alone does the same without a directory.
    no_results_reason: said on a card without results (why there are none).
    """
    summary = load_results(results_dir) if results_dir is not None else None
    if summary is not None:
        if dataset is not None and dataset != summary.dataset:
            raise ValueError(f"--dataset {dataset} but {summary.path} holds {summary.dataset} results")
        dataset = summary.dataset
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    info = DATASETS.get(dataset) if dataset else None
    template_path = Path(template) if template is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(
            f"model card template not found: {template_path}; pass --template PATH (the "
            "repository's model_cards/template.md)."
        )
    bank_sections: list[str] = []
    bank_spots = None
    if checkpoint is not None:
        config, bank_sections, bank_spots = _describe_checkpoint(Path(checkpoint))
        has_spot_bank = bank_spots is not None
    if has_spot_bank is None:
        has_spot_bank = True
    repo_id = repo_id or f"{DEFAULT_ORG}/mclstexp-{dataset or 'model'}"
    dataset_id = dataset_id or dataset
    results = eval_results(summary, info, dataset_id) if summary and info else []
    n_genes = config.n_genes if config is not None else (info.n_genes if info else None)
    units = (
        (getattr(config, "expression_units", None) if config is not None else None)
        or (summary.expression_units if summary else None)
        or (DEFAULT_UNITS if info else None)
    )
    model_name = f"mclSTExp {info.short}" if info else "mclSTExp"
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license=license,
        tags=list(CARD_TAGS),
        datasets=[dataset_id] if dataset_id else None,
        metrics=["pearsonr", "mse", "mae"],
        eval_results=results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        repo_id=repo_id,
        title=f"{model_name}: spatial gene expression from H&E"
        + (f", {info.short} data" if info else ""),
        info=info,
        encoder=f"timm `{config.image_encoder}`" if config is not None else "DenseNet-121",
        summary=summary,
        results_table=results_table(summary) if summary else None,
        n_model_index=len(results),
        n_genes=n_genes,
        gene_preview=list(config.gene_names[:8]) if config is not None else None,
        units=units,
        units_are_reference=units == DEFAULT_UNITS,
        transform=getattr(config, "expression_transform", None) if config is not None else None,
        has_spot_bank=has_spot_bank,
        bank_sections=bank_sections,
        bank_spots=bank_spots,
        retrieval_k=config.retrieval_k if config is not None else (info.retrieval_k if info else None),
        no_results_reason=no_results_reason,
        paper_citation=PAPER_CITATION,
        generator=_generator_comment(
            dataset, results_dir, repo_id, license, dataset_id, checkpoint, no_results_reason
        ),
    )
    return str(card).rstrip() + "\n"


def _describe_checkpoint(folder: Path) -> tuple[Any, list[str], int | None]:
    """Config, bank sections (in order of first appearance) and bank size of a checkpoint."""
    from ..models.mclstexp.configuration_mclstexp import MclSTExpConfig
    from ..models.mclstexp.spot_bank_mclstexp import SPOT_BANK_FILENAME, SpotBank

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; --checkpoint must be a saved model")
    config = MclSTExpConfig.from_pretrained(folder)
    if not (folder / SPOT_BANK_FILENAME).is_file():
        return config, [], None
    bank = SpotBank.load(folder / SPOT_BANK_FILENAME)
    return config, list(dict.fromkeys(bank.section_ids)), len(bank)


def _generator_comment(dataset, results_dir, repo_id, license, dataset_id,
                       checkpoint, no_results_reason) -> str:
    """How this card was made, so that `mclstexp card` can regenerate it exactly."""
    args = ["mclstexp", "card"]
    if results_dir is not None:
        args.append(_display_path(results_dir))
    if dataset:
        args += ["--dataset", dataset]
    args += ["--repo-id", repo_id, "--license", license]
    if dataset_id and dataset_id != dataset:
        args += ["--dataset-id", dataset_id]
    if checkpoint is not None:
        args += ["--checkpoint", _display_path(checkpoint)]
    if no_results_reason:
        args += ["--no-results-reason", no_results_reason]
    return "Generated by: " + shlex.join(args) + " (edit model_cards/template.md, not this file)"


def _display_path(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def write_card(text: str, out: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename); the text must parse as a model card."""
    ModelCard(text)
    from ..outputs import write_text_atomic

    return write_text_atomic(text, out)


__all__ = [
    "DATASETS",
    "PAPER_CITATION",
    "DatasetInfo",
    "ResultsSummary",
    "eval_results",
    "load_results",
    "render_card",
    "results_table",
    "write_card",
]
