"""Publishing checkpoints: what is committed, in which order, and what is refused.

Pushes go through the real `huggingface_hub` client to the local Hub of `tests/hub_server.py`
(which implements create-repo, preupload, commit and branch), so the test records exactly what
a push commits: the file list, the bytes, and the order of the commits. In-process pushes pass
`endpoint=`; the CLI and the card's code examples run in a subprocess with `HF_ENDPOINT`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import (
    LocalHub,
    client_env,
    make_checkpoint,
    run_client,
    run_scenarios,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "mclstexp_hub" / "models" / "mclstexp"
BASE_FILES = {"config.json", "model.safetensors", "spot_bank.safetensors",
              "configuration_mclstexp.py", "modeling_mclstexp.py", "spot_bank_mclstexp.py",
              "retrieval_mclstexp.py", "pixels_mclstexp.py"}
DERIVED = {"preprocessor_config.json", "pipeline_mclstexp.py", "image_processing_mclstexp.py",
           "slide_io_mclstexp.py", "precision_mclstexp.py", "slide_predict_mclstexp.py"}


# ================================================================ client (subprocess side)
def python_snippets(card_text: str) -> list[str]:
    """The ```python blocks of a model card's *How to use* section."""
    section = card_text.split("## How to use", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def client_push(args: dict) -> None:
    def cli_push():
        from mclstexp_hub.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["push", args["checkpoint"], "org/cli-pushed", "--card", args["card"]])
        return {"exit": code, "stdout": out.getvalue()}

    def card_snippets():
        results = []
        for snippet in python_snippets(Path(args["card"]).read_text()):
            namespace: dict = {}
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(snippet, "<model card>", "exec"), namespace)  # noqa: S102 - our card
            results.append(sorted(k for k in namespace if not k.startswith("__")))
        return results

    def model_push():
        from mclstexp_hub import MclSTExpModel
        from mclstexp_hub.hub.push import push_model
        from mclstexp_hub.models.mclstexp.image_processing_mclstexp import MclSTExpImageProcessor

        model = MclSTExpModel.from_pretrained(args["checkpoint"])
        processor = MclSTExpImageProcessor.from_model_config(model.config)
        result = push_model(model, "org/model-push", image_processor=processor,
                            card=Path(args["card"]).read_text())
        return {"card_commit": result.card_commit}

    def transformers_push():
        from transformers import PreTrainedModel

        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained(args["checkpoint"])
        model.push_to_hub("org/tf-push")
        return {"same_method": MclSTExpModel.push_to_hub is PreTrainedModel.push_to_hub}

    run_scenarios(
        {"cli_push": cli_push, "card_snippets": card_snippets, "model_push": model_push,
         "transformers_push": transformers_push},
        args["report"],
    )


# ================================================================== the tests (pytest side)
@pytest.fixture(scope="module")
def hub():
    with LocalHub() as server:
        yield server


@pytest.fixture(scope="module")
def bare_checkpoint(tmp_path_factory) -> Path:
    """Model + bank only: push must derive the processor config and the pipeline code."""
    return make_checkpoint(tmp_path_factory.mktemp("bare") / "ckpt", seed=5, processor=False,
                           pipeline=False)


@pytest.fixture(scope="module")
def card_text(bare_checkpoint) -> str:
    from mclstexp_hub.hub.cards import render_card

    return render_card("her2st", repo_id="org/pushed", checkpoint=bare_checkpoint)


@pytest.fixture(scope="module")
def first_push(hub, bare_checkpoint, card_text):
    from mclstexp_hub.hub.push import push_checkpoint

    before = {p.name: p.read_bytes() for p in bare_checkpoint.iterdir()}
    result = push_checkpoint(bare_checkpoint, "org/pushed", card=card_text, endpoint=hub.url)
    after = {p.name: p.read_bytes() for p in bare_checkpoint.iterdir()}
    return result, before, after


def test_push_commits_everything_then_the_card_last(hub, bare_checkpoint, first_push, card_text):
    result, before, _ = first_push
    commits = hub.commits("org/pushed")
    assert [c.message.split("\n")[0] for c in commits] == [
        "initial commit",
        "Upload mclSTExp checkpoint (weights, spot bank, image processor, remote code)",
        "Add model card",
    ]
    files_commit, card_commit = commits[1], commits[2]
    assert set(files_commit.added) == BASE_FILES | DERIVED
    assert card_commit.added == ["README.md"]
    assert (result.files_commit, result.card_commit) == (files_commit.sha, card_commit.sha)
    assert result.has_spot_bank and set(result.uploaded) == BASE_FILES | DERIVED

    repo = hub.files("org/pushed")
    for name in BASE_FILES - {"config.json"}:
        assert repo[name] == before[name], name
    for name in DERIVED & {p.name for p in PACKAGE_DIR.glob("*.py")}:
        assert repo[name] == (PACKAGE_DIR / name).read_bytes(), name
    config = json.loads(repo["config.json"])
    local_config = json.loads(before["config.json"])
    assert config.pop("custom_pipelines")["spatial-gene-expression"]["impl"] == (
        "pipeline_mclstexp.MclSTExpPipeline")
    assert config == local_config
    processor = json.loads(repo["preprocessor_config.json"])
    assert (processor["patch_size"], processor["pixel_scaling"]) == (32, "unit")
    assert repo["README.md"].decode() == card_text


def test_push_leaves_the_checkpoint_directory_untouched(first_push):
    _, before, after = first_push
    assert before == after
    assert "custom_pipelines" not in json.loads(before["config.json"])


def test_pushed_card_parses_with_model_card_load(hub, first_push, tmp_path):
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    path.write_bytes(hub.files("org/pushed")["README.md"])
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert "spatial-transcriptomics" in card.data.tags
    assert card.data.eval_results is None  # no measured results were given


def test_unchanged_push_makes_no_new_commit(hub, bare_checkpoint, first_push, card_text):
    from mclstexp_hub.hub.push import push_checkpoint

    n = len(hub.commits("org/pushed"))
    again = push_checkpoint(bare_checkpoint, "org/pushed", card=card_text, endpoint=hub.url)
    assert len(hub.commits("org/pushed")) == n
    assert again.card_commit == hub.commits("org/pushed")[-1].sha


def test_push_to_a_branch_leaves_main_alone(hub, bare_checkpoint, first_push, card_text):
    from mclstexp_hub.hub.push import push_checkpoint

    main_before = hub.files("org/pushed", "main")
    changed = bare_checkpoint.parent / "changed"
    make_checkpoint(changed, seed=6)
    result = push_checkpoint(changed, "org/pushed", card=card_text, revision="dev",
                             endpoint=hub.url)
    assert result.revision == "dev"
    assert hub.files("org/pushed", "main") == main_before
    dev = hub.files("org/pushed", "dev")
    assert dev["model.safetensors"] == (changed / "model.safetensors").read_bytes()
    assert dev["model.safetensors"] != main_before["model.safetensors"]


def test_push_model_and_training_leftovers(hub, tmp_path):
    import torch

    from mclstexp_hub import MclSTExpModel, SpotBank
    from mclstexp_hub.hub.push import push_checkpoint, push_model

    ckpt = make_checkpoint(tmp_path / "ckpt", seed=8)
    (ckpt / "checkpoint-10").mkdir()
    (ckpt / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / ".hidden").write_text("x")
    result = push_checkpoint(ckpt, "org/leftovers", endpoint=hub.url)
    assert not [n for n in result.uploaded if "checkpoint-" in n or n.startswith(".")
                or n == "trainer_state.json"]
    assert result.added == []  # processor and pipeline were saved with the checkpoint
    generated = hub.files("org/leftovers")["README.md"].decode()
    assert "## How to use" in generated and "org/leftovers" in generated

    model = MclSTExpModel.from_pretrained(ckpt)
    pushed = push_model(model, "org/from-model", endpoint=hub.url)
    files = hub.files("org/from-model")
    (tmp_path / "pushed_bank.safetensors").write_bytes(files["spot_bank.safetensors"])
    pushed_bank = SpotBank.load(tmp_path / "pushed_bank.safetensors")
    assert torch.equal(pushed_bank.embeddings, model.spot_bank.embeddings)
    assert pushed_bank.section_ids == model.spot_bank.section_ids
    assert "preprocessor_config.json" in files and pushed.has_spot_bank


def test_broken_checkpoints_are_refused_before_anything_is_pushed(hub, tmp_path):
    from mclstexp_hub import SpotBank
    from mclstexp_hub.hub.push import push_checkpoint

    good = make_checkpoint(tmp_path / "good", seed=9)

    def variant(name: str) -> Path:
        return Path(shutil.copytree(good, tmp_path / name))

    bank = SpotBank.load(good)
    bad_bank = variant("bad_bank")
    SpotBank(bank.embeddings, bank.expression, ["X"] + bank.gene_names[1:]).save(bad_bank)
    with pytest.raises(ValueError, match="Spot bank genes do not match"):
        push_checkpoint(bad_bank, "org/refused", endpoint=hub.url)

    bad_processor = variant("bad_processor")
    cfg = json.loads((bad_processor / "preprocessor_config.json").read_text())
    cfg["pixel_scaling"] = "imagenet"
    (bad_processor / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="pixel_scaling='imagenet'.*pixel_scaling='unit'"):
        push_checkpoint(bad_processor, "org/refused", endpoint=hub.url)

    no_auto_map = variant("no_auto_map")
    cfg = json.loads((no_auto_map / "config.json").read_text())
    del cfg["auto_map"]
    (no_auto_map / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="auto_map"):
        push_checkpoint(no_auto_map, "org/refused", endpoint=hub.url)

    no_code = variant("no_code")
    (no_code / "spot_bank_mclstexp.py").unlink()
    with pytest.raises(ValueError, match=r"spot_bank_mclstexp\.py \(needed by modeling_mclstexp\.py\)"):
        push_checkpoint(no_code, "org/refused", endpoint=hub.url, add_missing=False)

    pickled = variant("pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only pickle weights"):
        push_checkpoint(pickled, "org/refused", endpoint=hub.url)

    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_checkpoint(tmp_path, "org/refused", endpoint=hub.url)

    with pytest.raises(ValueError):
        push_checkpoint(good, "org/refused", card=card_text_invalid(tmp_path), endpoint=hub.url)
    assert "org/refused" not in hub.repos

    result = push_checkpoint(no_code, "org/filled", endpoint=hub.url)
    assert "spot_bank_mclstexp.py" in result.added
    assert hub.files("org/filled")["spot_bank_mclstexp.py"] == (
        PACKAGE_DIR / "spot_bank_mclstexp.py").read_bytes()
    assert hub.unhandled == []


def card_text_invalid(tmp_path: Path) -> Path:
    path = tmp_path / "bad_card.md"
    path.write_text("---\n- just\n- a list\n---\nnot a mapping\n")
    return path


@pytest.fixture(scope="module")
def push_client(hub, tmp_path_factory):
    from mclstexp_hub.hub.cards import render_card, write_card

    root = tmp_path_factory.mktemp("push_client")
    ckpt = make_checkpoint(root / "ckpt", seed=11)
    card = write_card(render_card("her2st", repo_id="org/cli-pushed", checkpoint=ckpt),
                      root / "card.md")
    args = {"checkpoint": str(ckpt), "card": str(card)}
    report = run_client(Path(__file__), "push", args, client_env(hub.url, root / "hf_home"))
    return report, ckpt, card


def test_cli_push_then_the_cards_code_examples_run_against_the_pushed_repo(hub, push_client):
    report, ckpt, _ = push_client
    entry = report["cli_push"]
    assert entry["ok"], entry.get("traceback")
    assert entry["values"]["exit"] == 0
    assert "card commit" in entry["values"]["stdout"]
    commits = hub.commits("org/cli-pushed")
    assert commits[-1].added == ["README.md"] and "README.md" not in commits[-2].added
    assert hub.files("org/cli-pushed")["model.safetensors"] == (ckpt / "model.safetensors").read_bytes()
    snippets = report["card_snippets"]
    assert snippets["ok"], snippets.get("traceback")
    first, second = snippets["values"]
    assert {"model", "processor", "prediction", "expression"} <= set(first)
    assert {"pipe", "prediction"} <= set(second)


def test_push_model_publishes_processor_and_card_last(hub, push_client):
    entry = push_client[0]["model_push"]
    assert entry["ok"], entry.get("traceback")
    commits = hub.commits("org/model-push")
    files = hub.files("org/model-push")
    assert {"model.safetensors", "spot_bank.safetensors", "preprocessor_config.json",
            "modeling_mclstexp.py"} <= set(files)
    assert commits[-1].added == ["README.md"]
    assert entry["values"]["card_commit"] == commits[-1].sha
    assert files["README.md"].decode() == Path(push_client[2]).read_text()


def test_transformers_push_to_hub_is_kept_and_uploads_a_complete_folder(hub, push_client):
    """The model keeps transformers' `push_to_hub`; through `save_pretrained` it is complete."""
    entry = push_client[0]["transformers_push"]
    assert entry["ok"], entry.get("traceback")
    assert entry["values"]["same_method"]
    files = hub.files("org/tf-push")
    assert {"model.safetensors", "spot_bank.safetensors", "preprocessor_config.json",
            "pipeline_mclstexp.py", "slide_io_mclstexp.py"} <= set(files)
    assert "custom_pipelines" in json.loads(files["config.json"])


def test_card_snippet_extraction_finds_both_examples(card_text):
    snippets = python_snippets(card_text)
    assert len(snippets) == 2
    assert 'MclSTExpModel.from_pretrained(repo_id)' in snippets[0]
    assert 'trust_remote_code=True' in snippets[1]


if __name__ == "__main__":
    scenario, args_path = sys.argv[1], sys.argv[2]
    client_args = json.loads(Path(args_path).read_text())
    {"push": client_push}[scenario](client_args)
