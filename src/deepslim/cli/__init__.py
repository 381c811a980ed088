"""The command line: parse, call the public API, print. No logic lives here.

One module per command (or close family of commands), each with ``register(sub)``; helpers they share live in
``_common``. Adding a command is one module and one entry in ``COMMANDS``.

Exit status: 0 success, 2 bad input (one line on stderr; a traceback only with --debug), 1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from deepslim.cli import (
    catalog,
    compress,
    demo,
    export,
    finetune,
    profile,
    prune,
    quantize,
    report,
    search,
    train,
    worker,
)
from deepslim.cli._common import add_threads_arg, err, out, parse_options, parse_shape, run_command

# the order of `deepslim --help`
COMMANDS = (profile, prune, quantize, train, search, worker, finetune, catalog, export, compress, demo, report)

__all__ = ["COMMANDS", "build_parser", "err", "main", "out", "parse_options", "parse_shape", "version_line"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2) that say where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version_line() -> str:
    """``deepslim X.Y.Z (torch A.B.C, Python D.E.F)``: the installed package's version, from its metadata."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("deepslim")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from deepslim import __version__ as own
    import torch

    return f"deepslim {own} (torch {torch.__version__}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """--version, computed only when asked (importing torch is not free)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepslim", description="Make PyTorch models smaller, faster and cheaper to run, and "
                     "prove it by measurement.")  # fmt: skip
    parser.add_argument("--version", action=_VersionAction, help="print the versions of deepslim and torch")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results")
    add_threads_arg(parser, dest="global_threads")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deepslim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING if not args.quiet else logging.ERROR,
                        format="deepslim: %(levelname)s: %(message)s")  # fmt: skip
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
