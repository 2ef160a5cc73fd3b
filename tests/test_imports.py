"""Import costs: building the CLI parser and the data subpackage never load torch/transformers.

Each check runs in a fresh interpreter (this test process has long imported torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def _loaded_after(code: str) -> dict:
    """Run `code` in a clean interpreter; report OMP_WAIT_POLICY and which heavy modules loaded."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, os, sys
        print(json.dumps({{"omp": os.environ.get("OMP_WAIT_POLICY"),
                          "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_build_parser_imports_no_torch_and_sets_omp_policy_first():
    report = _loaded_after(
        """
        import mclstexp_hub.cli as cli
        parser = cli.build_parser()
        assert "predict" in parser._subparsers._group_actions[0].choices
        """
    )
    assert report["loaded"] == [], f"building the parser imported {report['loaded']}"
    # set by mclstexp_hub.cli at import time, i.e. before any command can load torch
    assert report["omp"] == "PASSIVE"


def test_omp_policy_is_set_before_torch_loads():
    report = _loaded_after(
        """
        import os
        import mclstexp_hub.cli as cli
        cli.build_parser()
        policy_before_torch = os.environ.get("OMP_WAIT_POLICY")
        import torch  # noqa: F401
        assert policy_before_torch == "PASSIVE", policy_before_torch
        """
    )
    assert report["loaded"][0] == "torch"


def test_data_subpackage_imports_neither_torch_nor_transformers():
    report = _loaded_after(
        """
        import mclstexp_hub.data
        import mclstexp_hub.data.build
        import mclstexp_hub.data.hf_dataset
        """
    )
    assert report["loaded"] == [], f"mclstexp_hub.data imported {report['loaded']}"


def test_every_command_help_runs_without_torch():
    report = _loaded_after(
        """
        import contextlib, io
        import mclstexp_hub.cli as cli
        for argv in (["data", "build", "--help"], ["predict", "--help"], ["card", "--help"],
                     ["demo", "--help"], ["bank", "build", "--help"], ["train", "--help"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    cli.main(argv)
                except SystemExit as exc:
                    assert exc.code == 0, (argv, exc.code)
            assert "usage: mclstexp" in out.getvalue(), argv
        """
    )
    assert report["loaded"] == [], f"`--help` imported {report['loaded']}"


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    import pytest

    from mclstexp_hub.cli import main

    missing = str(tmp_path / "absent.h5ad")
    assert main(["domains", missing, "--n-clusters", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mclstexp domains: error:") and "absent.h5ad" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="absent.h5ad"):
        main(["--debug", "domains", missing, "--n-clusters", "2"])
