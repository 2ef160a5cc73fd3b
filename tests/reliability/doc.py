"""Write docs/reliability.md from the case table: `python -m tests.reliability.doc`.

The table is the suite itself (every row is asserted by tests/reliability/test_bad_inputs.py),
so the document cannot drift from what is tested.
"""

from __future__ import annotations

import collections
from pathlib import Path

from .test_bad_inputs import CASES

KLASSES = {
    "overwrite": "critical: `--overwrite` may destroy input",
    "decode": "critical: unbounded / silent image decoding",
    "cache": "critical: stale dataset cache",
    "paths": "metadata paths escaping the dataset",
    "modes": "image modes (16-bit, float, palette, CMYK, RGBA, greyscale)",
    "zero": "explicit 0 used or refused, never defaulted",
    "bank-size": "retrieval_k larger than the bank",
    "counts": "counts: non-integer, normalised, dropped or all-zero",
    "absurd": "absurd values (positions, model_type, k)",
    "files": "corrupt or missing files",
    "interrupts": "interrupts and later-step failures",
    "messages": "empty, binary or unparsable inputs",
    "silent": "inputs that used to give silent wrong answers",
}


def render() -> str:
    lines = [
        "# Reliability: what each bad input gets",
        "",
        "Generated from the bad-input suite (`tests/reliability/`, run by `make test` and CI) by",
        "`python -m tests.reliability.doc`. Every row is a test: it runs the real CLI on a small",
        "input the test makes, and asserts the exit code, that the last stderr line is",
        "`mclstexp <command>: error: …` naming the file or field shown, that no traceback is",
        "printed, that nothing is left behind (no output, no `.partial-*` / staging folder) and",
        "that every input is byte-for-byte intact. Decode-bomb rows run in a child process",
        "under an address-space limit (RLIMIT_AS). Rows whose outcome is *converted correctly*",
        "or *used as given* must succeed and are checked for the right result.",
        "",
        "Interrupts (SIGINT → exit 130, SIGTERM → exit 143, one line, nothing left behind) are",
        "tested separately in `tests/reliability/test_interrupts.py` for `data build`, `predict`",
        "and the other long-running commands listed there.",
        "",
    ]
    counts = collections.Counter(c.verdict for c in CASES)
    lines += [f"**{len(CASES)} cases**: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
              + ".", ""]
    by_class = collections.defaultdict(list)
    for case in CASES:
        by_class[case.klass].append(case)
    for klass in list(KLASSES) + sorted(set(by_class) - set(KLASSES)):
        cases = by_class.get(klass)
        if not cases:
            continue
        lines += [f"## {KLASSES.get(klass, klass)}", "",
                  "| case | command | input | outcome | the message names |", "|---|---|---|---|---|"]
        for c in cases:
            outcome = c.verdict if c.code == 0 else f"{c.verdict}, exit {c.code}"
            names = ", ".join(f"`{e}`" for e in c.expect) or "—"
            lines.append(f"| `{c.id}` | `{c.area}` | {c.what} | {outcome} | {names} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
    out.write_text(render() + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(CASES)} cases)")
