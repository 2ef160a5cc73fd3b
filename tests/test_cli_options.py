"""List-valued options take `B4 C2` and `B4,C2` alike, with types and choices checked."""

from __future__ import annotations

import argparse

import pytest

from mclstexp_hub.cli import build_parser
from mclstexp_hub.cli._options import ListOption


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--sections", nargs="+", action=ListOption)
    p.add_argument("--folds", nargs="+", action=ListOption, item_type=int)
    p.add_argument("--methods", nargs="+", action=ListOption, valid=["a", "b"])
    return p


@pytest.mark.parametrize("argv", [["B4", "C2", "C3"], ["B4,C2,C3"], ["B4,", "C2", ",C3"],
                                  ["B4, C2", "C3"]])
def test_spaces_and_commas_are_the_same(argv):
    assert _parser().parse_args(["--sections", *argv]).sections == ["B4", "C2", "C3"]


def test_types_and_choices_are_checked_after_splitting(capsys):
    assert _parser().parse_args(["--folds", "0,1", "2"]).folds == [0, 1, 2]
    assert _parser().parse_args(["--methods", "a,b"]).methods == ["a", "b"]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--folds", "0,x"])
    assert "'x' is not a valid int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["--methods", "a,c"])
    assert "invalid choice 'c'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["--sections", ","])
    assert "at least one value" in capsys.readouterr().err


def test_the_real_commands_accept_both_forms():
    parser = build_parser()
    a = parser.parse_args(["data", "build", "her2st", "--data-dir", "d", "--out", "o",
                           "--sections", "B4,C2", "C3"])
    assert a.sections == ["B4", "C2", "C3"]
    p = parser.parse_args(["predict", "--model", "m", "--image", "i", "--tile", "--out", "o.h5ad",
                           "--plot", "GNAS,FASN"])
    assert p.plot == ["GNAS", "FASN"]
