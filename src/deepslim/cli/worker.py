"""``deepslim worker``: join a search study in a shared Optuna storage and run its queued trials (issue 15)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command's parser to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
