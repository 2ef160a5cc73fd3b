"""Publish a checkpoint directory to the Hugging Face Hub: everything, then the model card.

A published mclSTExp repository must be a complete predictor: config and weights, the spot
bank (retrieval needs it), the image processor (the pixel scaling the tower was trained with),
and the remote code (model, config, spot bank, processor, pipeline) for `trust_remote_code`.
`push_checkpoint` checks that, fills what can be derived (processor config and pipeline code,
written by `hub.checkpoint.write_checkpoint`), uploads it in one commit, and uploads the model
card in a second commit, last: transformers' own `push_to_hub` rewrites README.md, and a card
that describes a repository should only appear once the files it describes are there.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from ..models.mclstexp.configuration_mclstexp import MclSTExpConfig
from ..models.mclstexp.spot_bank_mclstexp import SPOT_BANK_FILENAME, SpotBank
from .remote_code import PACKAGE_DIR, complete_remote_code

logger = logging.getLogger(__name__)

CARD_FILENAME = "README.md"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
IGNORE_PATTERNS = (
    CARD_FILENAME,  # uploaded separately, last
    ".*",
    "*/.*",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    "*.tmp-*",
    "checkpoint-*/*",  # Trainer resume states: not part of the published model
    "runs/*",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "trainer_state.json",
)


@dataclass
class PushResult:
    """What a push published."""

    repo_id: str
    revision: str
    url: str
    files_commit: str  # commit with weights, bank, processor and code
    card_commit: str  # the following commit, README.md only
    uploaded: list[str] = field(default_factory=list)  # paths of the files commit
    added: list[str] = field(default_factory=list)  # files not in the directory, derived by push
    has_spot_bank: bool = False


def collect_checkpoint_files(checkpoint_dir: str | os.PathLike) -> dict[str, Path]:
    """`{path in repo: local file}` for a checkpoint directory, minus training leftovers."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pattern) for pattern in IGNORE_PATTERNS):
            continue
        files[rel] = path
    return files


def check_checkpoint(files: dict[str, Path], where: str) -> MclSTExpConfig:
    """Refuse a directory that would publish a broken or inconsistent model."""
    if "config.json" not in files:
        raise FileNotFoundError(
            f"{where}: no config.json; save the model with `model.save_pretrained(dir)` first."
        )
    raw = json.loads(files["config.json"].read_text(encoding="utf-8"))
    if raw.get("model_type") != "mclstexp":
        raise ValueError(
            f"{where}/config.json: model_type is {raw.get('model_type')!r}, not 'mclstexp'."
        )
    if not raw.get("auto_map"):
        raise ValueError(
            f"{where}/config.json has no auto_map, so the repository could not be loaded with "
            "trust_remote_code=True; re-save it after `import mclstexp_hub` (which registers the "
            "auto classes)."
        )
    config = MclSTExpConfig.from_pretrained(files["config.json"].parent)
    if not any(name in files for name in WEIGHT_FILES):
        pickled = [name for name in PICKLE_WEIGHTS if name in files]
        raise FileNotFoundError(
            f"{where}: no model.safetensors"
            + (f" (only pickle weights {pickled}: load and re-save with save_pretrained to get "
               "safetensors)" if pickled else "")
            + "."
        )
    if SPOT_BANK_FILENAME in files:
        SpotBank.load(files[SPOT_BANK_FILENAME]).check_compatible(
            list(config.gene_names), config.projection_dim
        )
    if "preprocessor_config.json" in files:
        processor = json.loads(files["preprocessor_config.json"].read_text(encoding="utf-8"))
        for key in ("patch_size", "pixel_scaling"):
            if key in processor and processor[key] != getattr(config, key):
                raise ValueError(
                    f"{where}/preprocessor_config.json has {key}={processor[key]!r} but the "
                    f"model was trained with {key}={getattr(config, key)!r}; save the processor "
                    "with MclSTExpImageProcessor.from_model_config(model.config)."
                )
    return config


def _derive_missing(files: dict[str, Path], root: Path, staging: Path) -> list[str]:
    """Processor config and pipeline code when the directory lacks them (staged, not in place).

    They come from the one checkpoint writer (`write_checkpoint` of the model loaded from
    `root`), so a derived file is exactly what a fresh save would have written; the
    checkpoint's own files win, and its config.json only gains the `custom_pipelines` entry.
    """
    raw = json.loads(files["config.json"].read_text(encoding="utf-8"))
    need_processor = "preprocessor_config.json" not in files
    need_pipeline = not raw.get("custom_pipelines")
    if not (need_processor or need_pipeline):
        return []
    from ..models.mclstexp.modeling_mclstexp import MclSTExpModel
    from .checkpoint import write_checkpoint

    model = MclSTExpModel.from_pretrained(root, load_spot_bank=False)
    derived = write_checkpoint(model, staging / "derived")
    added: list[str] = []
    if need_processor:
        files["preprocessor_config.json"] = derived / "preprocessor_config.json"
        added.append("preprocessor_config.json")
    if need_pipeline:
        entry = json.loads((derived / "config.json").read_text(encoding="utf-8"))["custom_pipelines"]
        (staging / "config.json").write_text(
            json.dumps({**raw, "custom_pipelines": entry}, indent=2, sort_keys=True) + "\n",
            encoding="utf-8",
        )
        files["config.json"] = staging / "config.json"
        added.append("config.json (custom_pipelines entry)")
    for path in sorted(derived.glob("*.py")):
        if path.name not in files:  # the checkpoint's own code files win
            files[path.name] = path
            added.append(path.name)
    return added


def _card_text(card: str | os.PathLike | ModelCard | None, files_dir: Path, config, repo_id: str,
               has_bank: bool) -> str:
    """The card to upload: a ModelCard, card text (str with newlines) or a path to one."""
    if isinstance(card, ModelCard):
        text = str(card)
    elif isinstance(card, str) and "\n" in card:
        text = card
    elif card is not None:
        if not Path(card).is_file():
            raise FileNotFoundError(f"model card not found: {card}")
        text = Path(card).read_text(encoding="utf-8")
    elif (files_dir / CARD_FILENAME).is_file():
        text = (files_dir / CARD_FILENAME).read_text(encoding="utf-8")
    else:
        from .cards import render_card

        text = render_card(None, repo_id=repo_id, config=config, has_spot_bank=has_bank)
    ModelCard(text)  # parses the YAML front matter or raises
    return text


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    card: str | os.PathLike | ModelCard | None = None,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    add_missing: bool = True,
) -> PushResult:
    """Upload a checkpoint directory (one commit), then its model card (a second commit).

    card: a ModelCard, card text, a path to a card file, or None for the directory's README.md
        or, failing that, a card generated from the config (model_cards/template.md).
    add_missing: derive the image processor config and pipeline code when absent, and take
        remote-code modules the checkpoint lacks from the installed package.
    endpoint: Hub URL (default: HF_ENDPOINT / huggingface.co), e.g. a private Hub.
    """
    root = Path(checkpoint_dir)
    files = collect_checkpoint_files(root)
    config = check_checkpoint(files, str(root))
    has_bank = SPOT_BANK_FILENAME in files
    if not has_bank:
        logger.warning(
            "%s has no %s: the published model will embed images but cannot predict expression "
            "until a bank is attached.", root, SPOT_BANK_FILENAME,
        )
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="mclstexp-push-") as tmp:
        added = _derive_missing(files, root, Path(tmp)) if add_missing else []
        added += complete_remote_code(files, fill_from=PACKAGE_DIR if add_missing else None)
        card_text = _card_text(card, root, config, repo_id, has_bank)

        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        branch = revision or "main"
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in sorted(files.items())
        ]
        files_commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload mclSTExp checkpoint (weights, spot bank, "
            "image processor, remote code)",
            revision=branch,
        )
    card_commit = api.create_commit(
        repo_id,
        [CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=card_text.encode("utf-8"))],
        commit_message="Add model card",
        revision=branch,
    )
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        url=str(repo_url),
        files_commit=files_commit.oid,
        card_commit=card_commit.oid,
        uploaded=sorted(files),
        added=added,
        has_spot_bank=has_bank,
    )


def push_model(
    model: Any,
    repo_id: str,
    *,
    image_processor: Any | None = None,
    card: str | os.PathLike | ModelCard | None = None,
    **kwargs: Any,
) -> PushResult:
    """Push a model object: `write_checkpoint` into a temporary folder, then `push_checkpoint`.

    The way to publish a model *with its model card*: transformers' `model.push_to_hub` also
    uploads a complete folder but writes a generic README.md. Without `image_processor`, the
    one matching the model config is saved. Keyword arguments go to `push_checkpoint`
    (revision, private, token, commit_message, endpoint).
    """
    from .checkpoint import write_checkpoint

    with tempfile.TemporaryDirectory(prefix="mclstexp-save-") as tmp:
        folder = write_checkpoint(model, Path(tmp) / "checkpoint", image_processor=image_processor)
        return push_checkpoint(folder, repo_id, card=card, **kwargs)


__all__ = [
    "CARD_FILENAME",
    "PushResult",
    "check_checkpoint",
    "collect_checkpoint_files",
    "push_checkpoint",
    "push_model",
]
