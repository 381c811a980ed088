"""``deepslim finetune-ondevice (training under a memory budget): issue 16``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command's parser to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
