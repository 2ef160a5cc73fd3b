"""Run every case of the bad-input table (see harness.py for the contract each one asserts)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

from .harness import Case, run_case


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("cases_"):
            cases += importlib.import_module(f"{__package__}.{info.name}").CASES
    ids = [c.id for c in cases]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"case ids used twice: {duplicated}"
    return cases


CASES = all_cases()


def test_the_table_is_large_enough():
    assert len(CASES) >= 80, f"{len(CASES)} cases; the suite promises at least 80"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, assets, tmp_path, capsys):
    run_case(case, tmp_path / "work", assets, capsys)
