"""The command line: parse, call the public API, render. No logic lives here.

Exit status: 0 success, 2 bad input (one line on stderr; a traceback only with --debug), 1 internal failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from deepslim.errors import ConfigError, DeepSlimError

# Piped output is not cut to a terminal's 80 columns: scripts and logs get whole tables.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers (e.g. 1,3,224,224), got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape dimensions must be positive, got {text!r}")
    return shape


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def _load(args: argparse.Namespace, data: Any = None) -> Any:
    """The model that MODEL, --weights, --arch and -O name, sized for ``data`` (a DataBundle) when it is a zoo
    architecture, and carrying the data's preprocessing."""
    from deepslim.pipeline._pairing import load_for_data

    return load_for_data(args.model, data, weights=args.weights, arch=args.arch, options=parse_options(args.option))


def add_model_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """MODEL and the options that say how to load it, alike in every command."""
    what = "zoo name, file.py:factory, checkpoint (.pt), torch.export program (.pt2), .dsz archive"
    if optional:
        p.add_argument("model", nargs="?", help=f"{what} (default: the recipe's)")
    else:
        p.add_argument("model", help=f"{what}, or .onnx where only reading is needed (profile, bench)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. -O num_classes=10 -O small_input=true")  # fmt: skip
    p.add_argument("--arch", help="architecture of a state-dict file: a zoo name or file.py:factory")
    p.add_argument("--weights", help="state dict (.pt) to load into the model")


def cmd_profile(args: argparse.Namespace) -> int:
    from deepslim.analysis import profile
    from deepslim.analysis._format import profile_rows, summary_lines

    shape = parse_shape(args.input_shape) if args.input_shape else None
    if args.model.endswith(".onnx"):
        prof = profile(args.model, device=args.device, strict=not args.allow_unknown_ops, input_shape=shape)
    else:
        model = _load(args)
        prof = profile(model, device=args.device, strict=not args.allow_unknown_ops, input_shape=shape,
                       name=args.model)  # fmt: skip
    if args.json:
        print(json.dumps(prof.to_dict(), indent=2))
        return 0
    if not out.is_terminal:  # piped or redirected: the plain table, never truncated to a terminal width
        print(prof if not args.quiet else "\n".join(summary_lines(prof)))
        return 0
    header, rows = profile_rows(prof)
    table = Table(*header, title=f"profile of {prof.model}", show_lines=False)
    for col in table.columns[3:]:
        col.justify = "right"
    for row in rows:
        table.add_row(*row)
    if not args.quiet:
        out.print(table)
    for line in summary_lines(prof):
        out.print(line)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from deepslim.models import get_model_entry, list_models

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps([{"name": n, "task": get_model_entry(n).task, "paper": get_model_entry(n).paper}
                          for n in names], indent=2))  # fmt: skip
        return 0
    table = Table("model", "task", "paper")
    for n in names:
        entry = get_model_entry(n)
        table.add_row(n, entry.task, entry.paper)
    out.print(table)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from deepslim.analysis import get_device, list_devices

    names = [n for n in list_devices() if args.host or n != "host"]
    devices = [get_device(n) for n in names]
    if args.json:
        print(json.dumps([d.to_dict() for d in devices], indent=2))
        return 0
    table = Table("device", "fp32 GMAC/s", "int8 GMAC/s", "GB/s", "on-chip", "description")
    for d in devices:
        rates = (d.peak_for("fp32") / 1e9, d.peak_for("int8") / 1e9, d.mem_bandwidth_bytes_per_s / 1e9)
        table.add_row(d.name, *(f"{r:,.0f}" if r >= 100 else f"{r:.3g}" for r in rates),
                      f"{d.onchip_bytes / 2**20:.3g} MiB", d.description)  # fmt: skip
    out.print(table)
    if not args.host:
        out.print("(add --host to calibrate and show this machine; sources: deepslim devices --json)")
    return 0


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model_args = add_model_args
    p = sub.add_parser("profile", help="per-layer params, MACs, bytes, memory; latency and energy on a device")
    model_args(p)
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (default: the zoo model's own)")
    p.add_argument("--device", help="estimate latency and energy on this device (see `deepslim devices`)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--allow-unknown-ops", action="store_true", help="count unknown operators as zero MACs")
    p.set_defaults(func=cmd_profile)

    from deepslim import _cli_prune, _cli_quantize

    for command, module in (("prune", _cli_prune), ("quantize", _cli_quantize)):
        module.add_parser(sub, model_args)
        sub.choices[command].set_defaults(func=lambda a, mod=module: mod.run(a, _load, parse_shape, out))

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("devices", help="list device profiles for the cost model")
    p.add_argument("--host", action="store_true", help="also calibrate and show this machine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    from deepslim import _cli_export as ce

    ce.add_parsers(sub, model_args)
    sub.choices["export"].set_defaults(func=lambda a: ce.cmd_export(a, _load, parse_shape, out))
    sub.choices["bench"].set_defaults(func=lambda a: ce.cmd_bench(a, _load, parse_shape, out))

    from deepslim import _cli_compress as cc

    cc.add_parsers(sub, model_args)
    sub.choices["compress"].set_defaults(func=lambda a: cc.cmd_compress(a, out, err))
    sub.choices["pack"].set_defaults(func=lambda a: cc.cmd_pack(a, _load, out))
    sub.choices["unpack"].set_defaults(func=lambda a: cc.cmd_unpack(a, out))
    sub.choices["demo"].set_defaults(func=lambda a: cc.cmd_demo(a, out, err))
    cc.add_report_parser(sub)
    sub.choices["report"].set_defaults(func=lambda a: cc.cmd_report(a, out, err))
    return parser


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP: the terminal went away), raised in the main thread so that every ``finally`` runs and
    removes its temporary files and run directories; Python's default for both is to die without cleaning up."""


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_stop_signal(signum: int, _frame: Any) -> None:
    for sig in _STOP_SIGNALS:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(128 + signum)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    try:  # a signal the caller ignores (nohup: SIGHUP) stays ignored
        previous = {sig: signal.signal(sig, _on_stop_signal) for sig in _STOP_SIGNALS
                    if signal.getsignal(sig) != signal.SIG_IGN}  # fmt: skip
    except ValueError:  # not the main thread (main() called from a thread): signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING if not args.quiet else logging.ERROR,
                        format="deepslim: %(levelname)s: %(message)s")  # fmt: skip
    try:
        with _stop_signals_raise():
            return args.func(args)
    except Terminated as exc:
        err.print("deepslim: terminated; temporary files removed, earlier outputs left as they were")
        return int(exc.code)
    except DeepSlimError as exc:
        if args.debug:
            raise
        err.print(f"deepslim: error: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        err.print("deepslim: interrupted; temporary files removed, earlier outputs left as they were")
        return 130
    except BrokenPipeError:  # the reader (e.g. `| head`) closed the pipe: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in deepslim, not bad input
        if args.debug:
            raise
        err.print(f"deepslim: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
                  markup=False)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
