"""``deepslim fit`` and ``deepslim distill``: training and distillation from the command line (issue 15: ``--nproc``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the commands' parsers to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
