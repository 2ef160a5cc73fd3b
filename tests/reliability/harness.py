"""Table-driven bad-input suite: one `Case` per kind of bad input, run through the real CLI.

Every case asserts the same contract (issue "Reliability"): the exit code, one last line
`mclstexp <command>: error: …` naming the offending file or field, no traceback, nothing left
behind in the working folder, and inputs — the case's own and the shared assets — byte-for-byte
intact. Cases that must *succeed* (an input that is converted correctly) set `code=0` and say
which outputs they leave.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("clean error", "converted correctly", "used as given")


@dataclass(frozen=True)
class Case:
    """One bad input and what the tool must answer."""

    id: str
    area: str  # the command: data, predict, train, bank, convert, domains, evaluate, …
    klass: str  # the class: "overwrite", "decode", "cache", "paths", "modes", …
    what: str  # one line for docs/reliability.md
    make: Callable[[Path, Any], list[str]]  # builds the bad input under `work`; returns argv
    expect: tuple[str, ...] = ()  # substrings of the error line ({work} → the work folder)
    code: int = 2
    leaves: tuple[str, ...] = ()  # outputs a successful case leaves in `work` (path prefixes)
    check: Callable[[Path, Any], None] | None = None  # extra assertions after the run
    verdict: str = "clean error"
    subprocess: bool = False  # run `python -m mclstexp_hub.cli` in a child process
    address_space_gib: float | None = None  # RLIMIT_AS for the child (decode-bomb cases)
    env: dict[str, str] = field(default_factory=dict)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → content hash of every file under `root` (hidden files included)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            out[path.relative_to(root).as_posix()] = digest
        elif path.is_dir() and not any(path.iterdir()):
            out[path.relative_to(root).as_posix() + "/"] = "empty dir"
    return out


def assets_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Cheap identity (size, mtime) of the shared assets: large files are not rehashed."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], capsys, case: Case) -> tuple[int, str, str]:
    """Run the CLI in this process (fast) or in a child (signals, memory limits)."""
    argv = [str(a) for a in argv]
    if case.subprocess:
        env = {**os.environ, **case.env}
        preexec = None
        if case.address_space_gib is not None:
            limit = int(case.address_space_gib * 2**30)

            def preexec() -> None:  # pragma: no cover - runs in the child
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        proc = subprocess.run(
            [sys.executable, "-m", "mclstexp_hub.cli", *argv], capture_output=True, text=True,
            env=env, preexec_fn=preexec, timeout=600, check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr
    from mclstexp_hub.cli import main

    old = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_case(case: Case, work: Path, assets: Any, capsys) -> None:
    """Build the case's input, run it, and assert the contract."""
    work.mkdir(parents=True, exist_ok=True)
    argv = case.make(work, assets)
    before = snapshot(work)
    shared_before = assets_snapshot(assets.root)
    capsys.readouterr()
    code, out, err = run_cli(argv, capsys, case)
    after = snapshot(work)
    assert code == case.code, f"{case.id}: exit {code}, expected {case.code}\n{out}\n{err}"
    assert "Traceback" not in err, f"{case.id}: raw traceback\n{err}"
    if case.code != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert lines, f"{case.id}: no message on stderr"
        last = lines[-1]
        assert re.match(r"mclstexp [\w -]+: (error|interrupted)", last), f"{case.id}: {last}"
        for needle in case.expect:
            needle = needle.format(work=work, assets=assets.root)
            assert needle.lower() in last.lower(), f"{case.id}: {needle!r} not in {last!r}"
        # nothing left behind: the folder holds exactly what it held before
        assert after == before, f"{case.id}: files changed {_diff(before, after)}"
    else:
        added = set(after) - set(before)
        allowed = {p for p in added
                   if any(p == g or p.startswith(g.rstrip("/") + "/") for g in case.leaves)}
        assert added == allowed, f"{case.id}: unexpected outputs {sorted(added - allowed)}"
        for name in before:
            assert after.get(name) == before[name], f"{case.id}: input {name} changed"
    leftovers = [p for p in after if ".partial" in p or ".staging" in p or ".tmp-" in p]
    assert not leftovers, f"{case.id}: partial outputs left: {leftovers}"
    assert assets_snapshot(assets.root) == shared_before, f"{case.id}: shared assets changed"
    if case.check is not None:
        case.check(work, assets)


def _diff(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added={added[:8]} removed={removed[:8]} changed={changed[:8]}"
