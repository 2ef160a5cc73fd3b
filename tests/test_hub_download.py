"""Loading checkpoints from the Hub: revisions, the standard cache, offline reuse, errors.

The Hub is `tests/hub_server.py` on 127.0.0.1. `HF_ENDPOINT` and `HF_HUB_OFFLINE` are read when
huggingface_hub is imported, so every client runs in a subprocess: this file is also the client
(`python tests/test_hub_download.py SCENARIO ARGS.json`), and its top level imports nothing of
`mclstexp_hub`, so the remote-code scenario loads the repository's own code first.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import (
    TINY_GENES,
    LocalHub,
    client_env,
    make_checkpoint,
    probe_pixels,
    run_client,
    run_scenarios,
)

REPO = "org/mclstexp-tiny"
TOL = 1e-5


# ================================================================ client (subprocess side)
def _embed_report(model) -> dict:
    import torch

    with torch.no_grad():
        embeds = model.get_image_features(probe_pixels()).pooler_output
    bank = model.spot_bank
    return {
        "module": type(model).__module__,
        "image_embeds": embeds.tolist(),
        "bank_first_row": bank.embeddings[0].tolist() if bank is not None else None,
        "bank_size": len(bank) if bank is not None else None,
    }


def _requests(args: dict) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{args['hub_url']}/_local_hub/requests") as response:
        return json.loads(response.read())["count"]


def _cache_listing(cache: Path, repo: str) -> dict:
    folder = cache / ("models--" + repo.replace("/", "--"))
    refs = {p.name: p.read_text() for p in (folder / "refs").iterdir()} if (folder / "refs").is_dir() else {}
    snapshots = {
        p.name: sorted(f.name for f in p.iterdir()) for p in (folder / "snapshots").iterdir()
    } if (folder / "snapshots").is_dir() else {}
    return {"refs": refs, "snapshots": snapshots}


def client_online(args: dict) -> None:
    hf_cache = Path(args["hf_home"]) / "hub"
    explicit_cache = Path(args["cache_dir"])

    def remote_code():  # first: nothing of mclstexp_hub is imported yet
        import numpy as np
        from PIL import Image
        from transformers import AutoModel, pipeline

        model = AutoModel.from_pretrained(REPO, trust_remote_code=True).eval()
        pipe = pipeline("spatial-gene-expression", model=REPO, trust_remote_code=True)
        patch = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
        out = pipe(patch)
        return {**_embed_report(model), "pipeline_genes": list(out),
                "package_imported": "mclstexp_hub" in sys.modules}

    def main_default_cache():
        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained(REPO, token="hf_test_token").eval()
        prediction = model.predict_expression(pixel_values=probe_pixels())
        return {**_embed_report(model), "predicted_shape": list(prediction.expression.shape),
                "cache": _cache_listing(hf_cache, REPO)}

    def revision_tag():
        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained(REPO, revision="v1", cache_dir=explicit_cache)
        return {**_embed_report(model.eval()), "cache": _cache_listing(explicit_cache, REPO)}

    def revision_sha():
        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained(REPO, revision=args["sha_a"], cache_dir=explicit_cache)
        return _embed_report(model.eval())

    def local_files_only():
        from mclstexp_hub import MclSTExpModel

        before = _requests(args)
        main = MclSTExpModel.from_pretrained(REPO, local_files_only=True).eval()
        tag = MclSTExpModel.from_pretrained(
            REPO, revision="v1", cache_dir=explicit_cache, local_files_only=True
        ).eval()
        return {"main": _embed_report(main), "v1": _embed_report(tag),
                "requests": _requests(args) - before}

    def no_bank():
        from mclstexp_hub import MclSTExpModel

        model = MclSTExpModel.from_pretrained("org/mclstexp-nobank").eval()
        report = _embed_report(model)
        try:
            model.predict_expression(pixel_values=probe_pixels())
        except ValueError as exc:
            report["predict_error"] = str(exc)
        return report

    def load_error(repo: str, **kwargs):
        def scenario():
            from mclstexp_hub import MclSTExpModel

            MclSTExpModel.from_pretrained(repo, **kwargs)
            return "loaded"

        return scenario

    def race():
        from mclstexp_hub import MclSTExpModel

        return _embed_report(MclSTExpModel.from_pretrained("org/mclstexp-race").eval())

    run_scenarios(
        {
            "remote_code": remote_code,
            "main_default_cache": main_default_cache,
            "revision_tag": revision_tag,
            "revision_sha": revision_sha,
            "local_files_only": local_files_only,
            "no_bank": no_bank,
            "bad_genes": load_error("org/mclstexp-badgenes"),
            "bad_width": load_error("org/mclstexp-badwidth"),
            "missing_repo": load_error("org/does-not-exist"),
            "missing_revision": load_error(REPO, revision="no-such-branch"),
            "race": race,
        },
        args["report"],
    )


def client_offline(args: dict) -> None:
    explicit_cache = Path(args["cache_dir"])

    def remote_code():
        from transformers import AutoModel

        return _embed_report(AutoModel.from_pretrained(REPO, trust_remote_code=True).eval())

    def cached_loads():
        from mclstexp_hub import MclSTExpModel

        return {
            "main": _embed_report(MclSTExpModel.from_pretrained(REPO).eval()),
            "v1": _embed_report(
                MclSTExpModel.from_pretrained(REPO, revision="v1", cache_dir=explicit_cache).eval()
            ),
            "sha_a": _embed_report(
                MclSTExpModel.from_pretrained(REPO, revision=args["sha_a"], cache_dir=explicit_cache).eval()
            ),
        }

    def never_downloaded():
        from mclstexp_hub import MclSTExpModel

        MclSTExpModel.from_pretrained("org/mclstexp-nobank", revision="v9")
        return "loaded"

    run_scenarios(
        {"remote_code": remote_code, "cached_loads": cached_loads,
         "never_downloaded": never_downloaded},
        args["report"],
    )


# ================================================================== the tests (pytest side)
def _replace_bank(src: Path, dst: Path, bank) -> Path:
    shutil.copytree(src, dst)
    bank.save(dst / "spot_bank.safetensors")
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from mclstexp_hub import MclSTExpModel, SpotBank

    root = tmp_path_factory.mktemp("hub_download")
    hub = LocalHub().start()
    a = make_checkpoint(root / "a", seed=1)
    b = make_checkpoint(root / "b", seed=2)
    sha_a = hub.add_commit(REPO, a, tags=("v1",), message="checkpoint A")
    sha_b = hub.add_commit(REPO, b, message="checkpoint B")
    hub.add_commit("org/mclstexp-nobank", make_checkpoint(root / "nobank", seed=3, bank=False))

    bank_a, bank_b = SpotBank.load(a), SpotBank.load(b)
    renamed = list(TINY_GENES)
    renamed[3] = "NOT_IN_MODEL"
    hub.add_commit("org/mclstexp-badgenes", _replace_bank(a, root / "badgenes", SpotBank(
        bank_a.embeddings, bank_a.expression, renamed)))
    hub.add_commit("org/mclstexp-badwidth", _replace_bank(a, root / "badwidth", SpotBank(
        torch.rand(len(bank_a), 16), bank_a.expression, bank_a.gene_names)))

    # race: while the weights of commit 1 are being downloaded, main moves to a commit whose
    # bank differs; a correct load takes weights and bank from the same commit.
    hub.add_commit("org/mclstexp-race", a)
    race_next = _replace_bank(a, root / "race2", bank_b)
    moved = []

    def move_main(method: str, path: str) -> None:
        if (method == "GET" and path.startswith("/org/mclstexp-race/resolve/")
                and path.endswith("/model.safetensors") and not moved):
            moved.append(hub.add_commit("org/mclstexp-race", race_next, message="new bank"))

    hub.on_request = move_main

    expected = {}
    for name, folder in (("a", a), ("b", b)):
        model = MclSTExpModel.from_pretrained(folder).eval()
        with torch.no_grad():
            expected[name] = {
                "image_embeds": model.get_image_features(probe_pixels()).pooler_output,
                "bank_first_row": model.spot_bank.embeddings[0],
            }
    hf_home = root / "hf_home"
    args = {"hub_url": hub.url, "hf_home": str(hf_home), "cache_dir": str(root / "explicit_cache"),
            "sha_a": sha_a}
    script = Path(__file__)
    online = run_client(script, "online", args, client_env(hub.url, hf_home))
    n_before_offline = hub.request_count()
    offline = run_client(script, "offline", args, client_env(hub.url, hf_home, offline=True))
    yield {
        "hub": hub, "online": online, "offline": offline, "expected": expected,
        "sha_a": sha_a, "sha_b": sha_b, "offline_requests": hub.request_count() - n_before_offline,
        "moved": moved,
    }
    hub.stop()


def _values(report: dict, scenario: str):
    entry = report[scenario]
    assert entry["ok"], f"{scenario} failed: {entry['error_type']}: {entry['error']}\n{entry['traceback']}"
    return entry["values"]


def _error(report: dict, scenario: str) -> tuple[str, str]:
    entry = report[scenario]
    assert not entry["ok"], f"{scenario} should have failed but returned {entry['values']}"
    return entry["error_type"], entry["error"]


def _same(values: dict, expected: dict) -> bool:
    import torch

    return all(
        torch.allclose(torch.tensor(values[key]), expected[key], atol=TOL)
        for key in ("image_embeds", "bank_first_row")
    )


def test_main_is_downloaded_into_the_standard_cache_with_bank(world):
    values = _values(world["online"], "main_default_cache")
    assert _same(values, world["expected"]["b"]) and not _same(values, world["expected"]["a"])
    assert values["bank_size"] == 40 and values["predicted_shape"] == [3, len(TINY_GENES)]
    assert values["cache"]["refs"] == {"main": world["sha_b"]}
    assert {"config.json", "model.safetensors", "spot_bank.safetensors"} <= set(
        values["cache"]["snapshots"][world["sha_b"]]
    )
    assert any(r.authorization == "Bearer hf_test_token" for r in world["hub"].requests)


def test_revision_pinning_by_tag_and_commit(world):
    tag = _values(world["online"], "revision_tag")
    sha = _values(world["online"], "revision_sha")
    assert _same(tag, world["expected"]["a"]) and _same(sha, world["expected"]["a"])
    assert tag["cache"]["refs"]["v1"] == world["sha_a"]
    assert "spot_bank.safetensors" in tag["cache"]["snapshots"][world["sha_a"]]


def test_local_files_only_makes_no_request(world):
    values = _values(world["online"], "local_files_only")
    assert values["requests"] == 0
    assert _same(values["main"], world["expected"]["b"])
    assert _same(values["v1"], world["expected"]["a"])


def test_offline_mode_reuses_the_cache_without_any_request(world):
    loads = _values(world["offline"], "cached_loads")
    assert _same(loads["main"], world["expected"]["b"])
    assert _same(loads["v1"], world["expected"]["a"])
    assert _same(loads["sha_a"], world["expected"]["a"])
    assert _same(_values(world["offline"], "remote_code"), world["expected"]["b"])
    kind, message = _error(world["offline"], "never_downloaded")
    assert "offline" in message.lower() or "cache" in message.lower(), (kind, message)
    assert world["offline_requests"] == 0


def test_remote_code_loads_model_and_pipeline_without_the_package(world):
    values = _values(world["online"], "remote_code")
    assert values["module"].startswith("transformers_modules.")
    assert values["package_imported"] is False
    assert _same(values, world["expected"]["b"])
    assert values["pipeline_genes"] == TINY_GENES


def test_checkpoint_without_bank_embeds_and_explains_how_to_attach_one(world):
    values = _values(world["online"], "no_bank")
    assert values["bank_size"] is None and len(values["image_embeds"]) == 3
    assert "attach_spot_bank" in values["predict_error"]
    assert "build_spot_bank" in values["predict_error"]


def test_mismatched_bank_is_refused_with_both_values(world):
    kind, message = _error(world["online"], "bad_genes")
    assert kind == "ValueError"
    assert "NOT_IN_MODEL" in message or "GENE3" in message, message
    kind, message = _error(world["online"], "bad_width")
    assert kind == "ValueError" and "16" in message and "32" in message, message


def test_missing_repo_and_revision_give_hub_errors(world):
    kind, message = _error(world["online"], "missing_repo")
    assert "org/does-not-exist" in message, (kind, message)
    kind, message = _error(world["online"], "missing_revision")
    assert "no-such-branch" in message, (kind, message)


def test_server_saw_only_endpoints_it_implements(world):
    assert world["hub"].unhandled == []


def test_weights_and_bank_come_from_the_same_commit(world):
    assert world["moved"], "the race scenario did not move main during the download"
    values = _values(world["online"], "race")
    assert _same(values, world["expected"]["a"])


if __name__ == "__main__":
    scenario, args_path = sys.argv[1], sys.argv[2]
    client_args = json.loads(Path(args_path).read_text())
    {"online": client_online, "offline": client_offline}[scenario](client_args)
