"""`mclstexp zoo build`: the resumable data → train → benchmark → bank → card → push recipe.

End to end on small synthetic HER2+-layout data (3 sections of 3 patients, 8×8 spot grid,
frozen resnet10t, 3 epochs), pushed to the local Hub of `tests/hub_server.py`; the pushed repo
is loaded back with `MclSTExpModel.from_pretrained` through HF_ENDPOINT in a subprocess (the
client reads HF_ENDPOINT at import) and predicts. Then: a second run skips every step, a
changed option reruns from its step on, an interrupted step leaves nothing and the next run
resumes there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub, client_env, probe_pixels, run_client, run_scenarios

from mclstexp_hub.cli import build_parser
from mclstexp_hub.cli import main as cli_main
from mclstexp_hub.zoo.recipes import (
    STAGING_DIR,
    STEP_NAMES,
    ZooOptions,
    build_zoo_model,
    read_stamp,
)

REPO = "org/zoo-her2st"


# ================================================================ client (subprocess side)
def client_load(args: dict) -> None:
    def load_and_predict():
        import torch

        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained(args["repo"]).eval()
        with torch.no_grad():
            pred = model.predict_expression(pixel_values=probe_pixels(model.config.patch_size))
        return {"expression": pred.expression.tolist(), "bank_spots": len(model.spot_bank),
                "genes": list(model.config.gene_names)}

    run_scenarios({"load": load_and_predict}, args["report"])


# ====================================================================== test side
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from mclstexp_hub.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("zoo_raw") / "syn",
                                      sections=("A1", "B1", "C1"), n_rows=8, n_cols=8,
                                      progress=False)


@pytest.fixture(scope="module")
def hub():
    server = LocalHub().start()
    yield server
    server.stop()


def options(raw, out: Path, **changes) -> ZooOptions:
    base = {
        "preset": "her2st", "data_dir": str(raw.data_dir), "out": str(out), "genes": str(raw.genes_file),
        "patch_size": raw.spot_diameter, "data_license": "synthetic data, no licence restrictions",
        "profile": "cpu", "epochs": 3, "n_feature_views": 1, "image_encoder": "resnet10t", "retrieval_k": 10,
        "methods": ["mclstexp", "topk_mean_frozen"], "progress": False,
    }
    base.update(changes)
    return ZooOptions(**base)


def statuses(outcomes) -> dict[str, str]:
    return {o.name: o.status for o in outcomes}


class Interrupted(Exception):
    pass


def test_zoo_command_is_registered_and_cheap():
    args = build_parser().parse_args(["zoo", "build", "cscc", "--data-dir", "d", "--out", "o",
                                      "--kind", "hest", "--sections", "TENX95,TENX99"])
    assert args.func.__module__ == "mclstexp_hub.cli.zoo_cmd"
    assert args.preset == "cscc" and args.kind == "hest" and args.sections == ["TENX95", "TENX99"]
    assert STEP_NAMES == ("data", "train", "benchmark", "bank", "card", "push")
    for preset in ("her2st", "cscc", "alex10x"):
        build_parser().parse_args(["zoo", "build", preset, "--data-dir", "d", "--out", "o"])


def test_unknown_kind_and_foreign_out_are_refused(raw, tmp_path, capsys):
    assert cli_main(["zoo", "build", "her2st", "--data-dir", str(raw.data_dir), "--out",
                     str(tmp_path / "o"), "--kind", "no-such-reader"]) == 2
    assert "no such reader" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli_main(["zoo", "build", "her2st", "--data-dir", str(raw.data_dir), "--out",
                     str(foreign)]) == 2
    assert "not written by `mclstexp zoo build`" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_zoo_build_end_to_end_resumes_skips_and_reruns(raw, hub, tmp_path, monkeypatch, capsys):
    import torch

    from mclstexp_hub import MclSTExpModel
    from mclstexp_hub.training import trainer

    out = tmp_path / "zoo"
    lines: list[str] = []

    # 1. the train step is interrupted after writing part of its output: nothing of it stays
    real_train = trainer.train_model

    def interrupted_train(dataset, genes, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{partial")
        raise Interrupted("killed mid-training")

    monkeypatch.setattr(trainer, "train_model", interrupted_train)
    with pytest.raises(Interrupted):
        build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url), say=lines.append)
    assert lines[-1].startswith("[2/6] train") and "failed" in lines[-1]
    assert read_stamp(out, "data") is not None and read_stamp(out, "train") is None
    assert not (out / "checkpoint").exists()
    assert not (out / STAGING_DIR).exists() or not any((out / STAGING_DIR).iterdir())
    monkeypatch.setattr(trainer, "train_model", real_train)

    # 2. the next run resumes at train and pushes
    lines.clear()
    first = build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url), say=lines.append)
    assert statuses(first) == {"data": "skipped", **{s: "done" for s in STEP_NAMES[1:]}}
    assert any(line.startswith("[1/6] data") and "skipped" in line for line in lines)
    assert any(line.startswith("[6/6] push") and "done in" in line for line in lines)
    summary = json.loads((out / "benchmark" / "summary.json").read_text())
    assert summary["split"] == "patient" and len(summary["folds"]) == 3
    card = (out / "model_card.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    measured = {m["name"].split(":")[0]: m["value"]
                for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert measured["PCC(ACG)"] == round(summary["methods"]["mclstexp"]["mean"]["pcc_acg"], 4)
    files = hub.files(REPO)
    assert {"model.safetensors", "spot_bank.safetensors", "config.json",
            "preprocessor_config.json", "modeling_mclstexp.py"} <= set(files)
    assert files["README.md"].decode() == card
    commits = len(hub.commits(REPO))

    # the pushed repository loads through HF_ENDPOINT and predicts what the local model does
    report = run_client(Path(__file__), "load", {"repo": REPO},
                        client_env(hub.url, tmp_path / "hf_home"))
    assert report["load"]["ok"], report["load"].get("traceback")
    local = MclSTExpModel.from_pretrained(out / "model").eval()
    with torch.no_grad():
        expected = local.predict_expression(pixel_values=probe_pixels(local.config.patch_size))
    remote = torch.tensor(report["load"]["values"]["expression"])
    assert remote.shape == (3, local.config.n_genes)
    assert torch.allclose(remote, expected.expression, atol=1e-5)
    assert report["load"]["values"]["bank_spots"] == sum(raw.n_spots.values())

    # 3. a second run (through the CLI; the Hub from HF_ENDPOINT) skips every step
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    capsys.readouterr()
    argv = ["zoo", "build", "her2st", "--data-dir", str(raw.data_dir), "--out", str(out),
            "--genes", str(raw.genes_file), "--patch-size", str(raw.spot_diameter),
            "--data-license", "synthetic data, no licence restrictions", "--epochs", "3",
            "--feature-views", "1", "--image-encoder", "resnet10t", "--retrieval-k", "10",
            "--methods", "mclstexp", "topk_mean_frozen", "--push", REPO, "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    step_lines = [line for line in printed if line.startswith("[")]
    assert len(step_lines) == 6 and all("skipped: current" in line for line in step_lines)
    assert "0 run, 6 skipped" in printed[-1]
    assert len(hub.commits(REPO)) == commits

    # 4. one changed option reruns from its step on: the bank batching → bank, card, push
    lines.clear()
    again = build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url, bank_batch_size=16),
                            say=lines.append)
    assert statuses(again) == {"data": "skipped", "train": "skipped", "benchmark": "skipped",
                               "bank": "done", "card": "done", "push": "done"}
    assert any("bank" in line and "options changed: batch_size" in line for line in lines)
    assert len(hub.commits(REPO)) > commits  # a new files commit (the card text is unchanged)
    assert hub.files(REPO)["spot_bank.safetensors"] == (
        out / "model" / "spot_bank.safetensors").read_bytes()
    assert read_stamp(out, "bank")["inputs"]["options"]["batch_size"] == 16

    # a changed card licence reruns card and push only, and the Hub gets the new card
    later = build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url, bank_batch_size=16,
                                    card_license="apache-2.0"), say=lines.append)
    assert [o.name for o in later if o.status == "done"] == ["card", "push"]
    assert "license: apache-2.0" in hub.files(REPO)["README.md"].decode()

    # 5. an output removed by hand is rebuilt (and what follows it)
    (out / "model_card.md").unlink()
    lines.clear()
    rebuilt = build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url, bank_batch_size=16,
                                      card_license="apache-2.0"), say=lines.append)
    assert [o.name for o in rebuilt if o.status == "done"] == ["card", "push"]
    assert any("output model_card.md missing" in line for line in lines)

    # 6. an interrupted bank rebuild keeps nothing new; the next run resumes at bank
    import mclstexp_hub.training.bank as bank_module

    real_bank = bank_module.build_bank_from_dataset

    def broken_bank(*args, **kwargs):
        raise Interrupted("killed while embedding the bank")

    monkeypatch.setattr(bank_module, "build_bank_from_dataset", broken_bank)
    with pytest.raises(Interrupted):
        build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url, bank_batch_size=8,
                                card_license="apache-2.0"), say=lines.append)
    assert read_stamp(out, "bank") is None  # the older model folder is no longer current
    assert not any((out / STAGING_DIR).iterdir())
    monkeypatch.setattr(bank_module, "build_bank_from_dataset", real_bank)
    resumed = build_zoo_model(options(raw, out, push=REPO, endpoint=hub.url, bank_batch_size=8,
                                      card_license="apache-2.0"), say=lines.append)
    assert [o.name for o in resumed if o.status == "done"] == ["bank", "card", "push"]
    assert read_stamp(out, "bank")["inputs"]["options"]["batch_size"] == 8


if __name__ == "__main__":
    scenario, args_path = sys.argv[1], sys.argv[2]
    {"load": client_load}[scenario](json.loads(Path(args_path).read_text()))
