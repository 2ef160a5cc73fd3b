"""Bad inputs to `mclstexp pretrain` (the synthetic HER2+-layout raw data, resnet10t)."""

from __future__ import annotations

from .harness import Case


def _pretrain(assets, out, *extra) -> list[str]:
    return ["pretrain", "her2st", "--data-dir", assets.data_dir, "--sections", "B1",
            "--image-encoder", "resnet10t", "--encoder-input-size", "32", "--window", "112",
            "--pitch", "56", "--epochs", "1", "--batch-size", "8", "--max-tiles", "16",
            "--precision", "fp32", "--quiet", "--out", out, *extra]


def _option(option, value):
    return lambda work, assets: _pretrain(assets, work / "tower.safetensors", option, value)


def _not_safetensors(work, assets):
    return _pretrain(assets, work / "tower.pt")


def _existing(work, assets):
    (work / "tower.safetensors").write_bytes(b"someone's weights")
    return _pretrain(assets, work / "tower.safetensors")


def _unknown_section(work, assets):
    return _pretrain(assets, work / "tower.safetensors", "--sections", "Z9")


CASES = [
    Case("pretrain-epochs-zero", "pretrain", "zeros", "--epochs 0", _option("--epochs", "0"),
         ("epochs",)),
    Case("pretrain-batch-size-one", "pretrain", "absurd", "--batch-size 1 (no negatives)",
         _option("--batch-size", "1"), ("batch_size", "at least 2")),
    Case("pretrain-jitter-one", "pretrain", "absurd", "--jitter 1 (colours to black)",
         _option("--jitter", "1"), ("jitter",)),
    Case("pretrain-input-size-small", "pretrain", "absurd", "--encoder-input-size 8",
         _option("--encoder-input-size", "8"), ("encoder_input_size",)),
    Case("pretrain-out-not-safetensors", "pretrain", "messages", "--out without .safetensors",
         _not_safetensors, ("*.safetensors",)),
    Case("pretrain-out-exists", "pretrain", "overwrite", "--out an existing file, no --overwrite",
         _existing, ("--overwrite",)),
    Case("pretrain-unknown-section", "pretrain", "messages", "--sections names no section",
         _unknown_section, ("Z9",)),
]


def _record_exists(work, assets):
    (work / "record.json").write_text("someone's notes")
    return _pretrain(assets, work / "tower.safetensors", "--record", work / "record.json")


CASES.append(Case("pretrain-record-exists", "pretrain", "overwrite",
                  "--record an existing file, no --overwrite", _record_exists, ("--record",)))
