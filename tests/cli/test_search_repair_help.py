"""``deepslim search --help``: the ``--repair`` help and ``search()``'s docstring describe the repair the code makes
(the lightest change: channels as sampled, then notched down, the precision mixes at each notch), not the all-int8-first
rule it replaced in session 19 (review R19 L5)."""

import argparse

from deepslim.cli.search import register
from deepslim.search.engine import search


def _repair_help() -> str:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    return " ".join(next(a for a in sub._actions if "--repair" in a.option_strings).help.split())


def test_the_repair_help_describes_the_lightest_change_not_all_int8_first():
    text = _repair_help()
    assert "all int8" not in text and "lightest change" in text and "least slack first" in text
    assert "repair_rule" in text and "--proxy-steps N" in text


def test_the_search_docstring_describes_the_lightest_change_not_layers_int8_first():
    doc = " ".join((search.__doc__ or "").split())
    assert "its layers int8, its channel counts notched down" not in doc
    assert "the lightest change within budget" in doc and "repair_rule" in doc
