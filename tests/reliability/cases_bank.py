"""Bad inputs to `mclstexp bank build` that concern its outputs, options and checkpoint files
(damaged datasets are in cases_dataset.py)."""

from __future__ import annotations

import json
import shutil

from .harness import Case


def _bank(assets, *, checkpoint=None, dataset=None, out=None, extra=()) -> list[str]:
    return ["bank", "build", checkpoint or assets.checkpoint, "--dataset", dataset or assets.dataset,
            "--out", out, "--quiet", *extra]


def _ckpt(work, assets):
    return assets.copy("checkpoint", work)


def _out_is_shard(work, assets):
    dataset = assets.copy("dataset", work)
    shard = dataset / json.loads((dataset / "mclstexp_dataset.json").read_text())["shards"]["B1"]
    return _bank(assets, dataset=dataset, out=shard, extra=("--overwrite",))


def _out_is_dataset_folder(work, assets):
    dataset = assets.copy("dataset", work)
    return _bank(assets, dataset=dataset, out=dataset, extra=("--overwrite",))


def _out_is_weights(work, assets):
    ckpt = _ckpt(work, assets)
    return _bank(assets, checkpoint=ckpt, out=ckpt / "model.safetensors", extra=("--overwrite",))


def _out_foreign_file(work, assets):
    target = work / "bank.safetensors"
    target.write_bytes(b"not a bank of ours")
    return _bank(assets, out=target, extra=("--overwrite",))


def _out_exists(work, assets):
    target = work / "bank.safetensors"
    shutil.copy2(assets.checkpoint / "spot_bank.safetensors", target)
    return _bank(assets, out=target)


def _batch_zero(work, assets):
    return _bank(assets, out=work / "bank.safetensors", extra=("--batch-size", "0"))


def _batch_one(work, assets):
    return _bank(assets, out=work / "bank.safetensors", extra=("--batch-size", "1"))


def _check_batch_one(work, assets):
    from mclstexp_hub.models.mclstexp.spot_bank_mclstexp import SpotBank

    assert SpotBank.load(work / "bank.safetensors").metadata["bank_batch_size"] == 1


def _config_missing(work, assets):
    ckpt = _ckpt(work, assets)
    (ckpt / "config.json").unlink()
    return _bank(assets, checkpoint=ckpt, out=work / "bank.safetensors")


def _weights_corrupt(work, assets):
    ckpt = _ckpt(work, assets)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    return _bank(assets, checkpoint=ckpt, out=work / "bank.safetensors")


def _other_architecture(work, assets):
    ckpt = _ckpt(work, assets)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(config))
    return _bank(assets, checkpoint=ckpt, out=work / "bank.safetensors")


def _unknown_section(work, assets):
    return _bank(assets, out=work / "bank.safetensors", extra=("--sections", "Z9"))


CASES = [
    Case("bank-out-is-shard", "bank", "overwrite", "--out = a shard of the input dataset",
         _out_is_shard, ("inside the input dataset",)),
    Case("bank-out-is-dataset-folder", "bank", "overwrite", "--out = the input dataset folder",
         _out_is_dataset_folder, ("inside the input dataset",)),
    Case("bank-out-is-weights", "bank", "overwrite",
         "--out = the checkpoint's model.safetensors, --overwrite", _out_is_weights,
         ("model.safetensors", "input")),
    Case("bank-out-foreign-file", "bank", "overwrite", "--overwrite over a file not ours",
         _out_foreign_file, ("not a spot bank file",)),
    Case("bank-out-exists", "bank", "overwrite", "existing --out without --overwrite",
         _out_exists, ("--overwrite",)),
    Case("bank-batch-size-zero", "bank", "zeros", "--batch-size 0", _batch_zero,
         ("--batch-size",)),
    Case("bank-batch-size-one", "bank", "zeros", "--batch-size 1 is used and recorded",
         _batch_one, code=0, leaves=("bank.safetensors",), check=_check_batch_one,
         verdict="used as given"),
    Case("bank-config-missing", "bank", "messages", "checkpoint without config.json",
         _config_missing, ("config.json",)),
    Case("bank-weights-corrupt", "bank", "decode", "checkpoint weights cut short",
         _weights_corrupt, ("model.safetensors",)),
    Case("bank-other-architecture", "bank", "messages", "config.json of model_type bert",
         _other_architecture, ("model_type",)),
    Case("bank-unknown-section", "bank", "messages", "--sections Z9", _unknown_section, ("Z9",)),
]
