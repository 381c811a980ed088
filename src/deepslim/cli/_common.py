"""What every command shares: the consoles, argument parsing helpers, model loading, spinners and progress bars,
the before/after table, and the mapping of exceptions to exit statuses. Command modules import only this module and
the library's API; nothing here knows a particular command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from deepslim.analysis.measurement import Measurement
from deepslim.errors import ConfigError, DeepSlimError

# Piped output is not cut to a terminal's 80 columns: scripts and logs get whole tables.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Command = Callable[[argparse.Namespace], int]

MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".dsz")

MASK_ONLY_WARNING = ("mask-only sparsity: dense runtimes (PyTorch, ONNX Runtime on CPU) still compute every zero, so "
                     "expect no latency gain; the gain is in compressed size on disk")  # fmt: skip


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` (or ``1x3x224x224``) as a tuple of positive integers."""
    if not text.strip():
        raise ConfigError("--input-shape is empty: give comma-separated integers (e.g. 1,3,224,224)")
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers (e.g. 1,3,224,224), got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape dimensions must be positive, got {text!r}")
    return shape


def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--round-to``, ``--epochs`` that must train)."""
    value = _number(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(value)


def nonneg_int(text: str) -> int:
    """An argparse type: a whole number >= 0 (``--seed``, ``--epochs``)."""
    value = _number(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(value)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (``--seconds``, ``--lr``)."""
    value = _number(text, float, "a number > 0")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return float(value)


def threads_arg(text: str) -> int:
    """An argparse type: an intra-op thread count, 1 to :data:`deepslim._threads.MAX_THREADS`."""
    from deepslim._threads import MAX_THREADS

    value = _number(text, int, f"a whole number of threads from 1 to {MAX_THREADS}")
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads from 1 to {MAX_THREADS}, got {text!r} "
                                         "(leave --threads out for the default)")  # fmt: skip
    return int(value)


def add_threads_arg(p: argparse.ArgumentParser, dest: str = "threads") -> None:
    """``--threads N``: intra-op threads for training, calibration and timing."""
    p.add_argument("--threads", dest=dest, type=threads_arg, metavar="N",
                   help="intra-op threads for training, calibration and timing (default: torch's, or 1 when the "
                        "machine's load average is above its core count)")  # fmt: skip


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-O KEY=VALUE`` pairs, each value read as YAML (numbers, booleans, lists)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


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


def load(args: argparse.Namespace, data: Any = None) -> Any:
    """The model that MODEL, --weights, --arch and -O name, sized for ``data`` (a DataBundle) when it is a zoo
    architecture, and carrying the data's preprocessing."""
    from deepslim.pipeline import load_for_data

    return load_for_data(args.model, data, weights=args.weights, arch=args.arch, options=parse_options(args.option))


def busy(args: argparse.Namespace, what: str) -> Any:
    """A spinner on stderr while ``what`` runs (nothing with --quiet or --json, or when stderr is not a terminal)."""
    if args.quiet or getattr(args, "json", False) or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(what)


def prepare(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, Any]:
    """The model (sized for the data when it is a zoo architecture, and carrying the data's preprocessing), its
    example input, and the data (or None)."""
    from deepslim.data import load_data
    from deepslim.models import input_of_shape

    data = load_data(args.data) if args.data else None
    model = load(args, data)
    x: torch.Tensor | None
    if args.input_shape is not None:
        x = input_of_shape(model, parse_shape(args.input_shape))  # token ids for a model of token ids
    elif data is not None:
        x = data.example_input
    else:
        x = default_input(model)
    if x is None:
        raise ConfigError(f"{args.model} is not a zoo model, so its input shape is unknown: give --input-shape "
                          "(e.g. 1,3,32,32) or --data")  # fmt: skip
    return model, x, data


def check_output(args: argparse.Namespace, suffixes: tuple[str, ...]) -> None:
    """Refuse an ``-o`` path of a kind the command does not write, before any work is done."""
    from deepslim._io import check_writable

    path = getattr(args, "output", None)
    if path is None:
        return
    if Path(path).suffix in suffixes:
        check_writable(path)
        return
    hint = "; deepslim export writes ONNX" if Path(path).suffix == ".onnx" else ""
    raise ConfigError(f"deepslim {args.command} -o writes {', '.join(suffixes)} files, got {path!r}: name the "
                      f"output with one of these suffixes{hint}")  # fmt: skip


def default_input(model: nn.Module) -> torch.Tensor | None:
    """The example input of a zoo architecture, or one like the input its file recorded; None when unknown."""
    from deepslim.models import ARCH_ATTR, example_input, list_models

    arch = getattr(model, ARCH_ATTR, None)
    if isinstance(arch, dict) and arch.get("name") in list_models():
        return example_input(arch["name"], **arch.get("options", {}))
    return recorded_input(model)


def recorded_input(model: nn.Module) -> torch.Tensor | None:
    """An input like the one the model's file recorded (shape and dtype), or None when it recorded none."""
    from deepslim.models import INPUT_ATTR

    record = getattr(model, INPUT_ATTR, None)
    if not isinstance(record, dict) or "shape" not in record:
        return None
    dtype = getattr(torch, str(record.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        return None
    shape = tuple(int(d) for d in record["shape"])
    return torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)


# ---- before/after measurements (prune, quantize) ----


def snapshot(model: nn.Module, x: torch.Tensor, data: Any, latency: bool) -> Measurement:
    """What a before/after table shows: size, work, latency in ONNX Runtime (``latency``) and the task metric."""
    from deepslim.pipeline import measure

    return measure(model, data, example_input=x, latency=latency, min_seconds=0.5, archive=False)


def snapshot_dict(m: Measurement) -> dict[str, Any]:
    """The before/after keys of ``prune --json`` / ``quantize --json``."""
    return {"params": m.params, "nonzero_params": m.nonzero_params, "weight_bytes": m.weight_bytes, "macs": m.macs,
            "latency_ms": m.measured_latency_ms, "accuracy": m.accuracy}  # fmt: skip


def render(title: str, before: Measurement, after: Measurement, warnings: list[str], args: argparse.Namespace) -> None:
    """The before/after table of a prune or quantize command, its warnings, and the file it wrote."""
    from deepslim.analysis import human

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    table = Table("", "before", "after", "before / after", title=title)
    table.add_row("parameters", f"{before.params:,}", f"{after.params:,}", ratio(before.params, after.params))
    table.add_row("nonzero parameters", f"{before.nonzero_params:,}", f"{after.nonzero_params:,}",
                  ratio(before.nonzero_params, after.nonzero_params))  # fmt: skip
    table.add_row("weight bytes", human(before.weight_bytes, "B"), human(after.weight_bytes, "B"),
                  ratio(before.weight_bytes, after.weight_bytes))  # fmt: skip
    table.add_row("MACs", f"{before.macs:,}", f"{after.macs:,}", ratio(before.macs, after.macs))
    ms_before, ms_after = before.measured_latency_ms, after.measured_latency_ms
    if ms_before is not None and ms_after is not None:
        table.add_row("latency, ONNX Runtime (ms)", f"{ms_before:.3f}", f"{ms_after:.3f}",
                      ratio(ms_before, ms_after))  # fmt: skip
    if before.accuracy is not None and after.accuracy is not None:
        label = f"test accuracy{' (after fine-tuning)' if getattr(args, 'finetune_epochs', 0) else ''}"
        table.add_row(label, f"{100 * before.accuracy:.2f} %", f"{100 * after.accuracy:.2f} %",
                      f"{100 * (after.accuracy - before.accuracy):+.2f} pp")  # fmt: skip
    out.print(table)
    for w in warnings:
        out.print(f"warning: {w}")
    if args.output:
        out.print(f"wrote {args.output}")


# ---- recipe runs (compress, demo) ----


class Progress:
    """Progress of a recipe run on stderr: a bar per stage (epochs when it trains), a line when a stage ends."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.quiet = quiet
        # bars only on a terminal: in a log they are noise (and an error stays the only line on stderr)
        self.bar = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=quiet or not err.is_terminal)  # fmt: skip
        self.task: Any = None

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event == "stage_start":
            label = f"stage {payload['index']}: {payload['stage']}"
            self.task = self.bar.add_task(label, total=payload.get("epochs") or None)
        elif event == "epoch" and self.task is not None:
            self.bar.update(self.task, advance=1, description=f"stage {payload['stage']}: epoch {payload['epoch']}, "
                            f"val accuracy {payload['val_accuracy']:.4f}")  # fmt: skip
        elif event == "stage_end":
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            self.bar.console.print(f"{payload['index']} {payload['stage']}: accuracy {payload['accuracy']:.4f}, "
                                   f"{payload['nonzero_params']:,} nonzero parameters, archive "
                                   f"{fmt_bytes(payload.get('archive_bytes'))} ({payload['seconds']:.1f} s)",
                                   markup=False)  # fmt: skip


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} B"


def stage_table(metrics: list[dict[str, Any]], title: str) -> Table:
    """Deep Compression's table: each stage's accuracy, nonzeros, bytes on disk and ratio to the dense model."""
    ref = next((m["archive_bytes"] for m in metrics if m["stage"] == "train"), metrics[0]["archive_bytes"])
    table = Table("stage", "accuracy", "params", "nonzero", "archive", "ratio", "MACs", "energy (est.)",
                  title=title)  # fmt: skip
    for m in metrics:
        ratio = f"{ref / m['archive_bytes']:.1f}x" if m.get("archive_bytes") and ref else "n/a"
        table.add_row(f"{m['index']} {m['stage']}", f"{100 * m['accuracy']:.2f} %", f"{m['params']:,}",
                      f"{m['nonzero_params']:,}", fmt_bytes(m.get("archive_bytes")), ratio, f"{m['macs']:,}",
                      f"{m['estimated_energy_uj']:.2f} uJ")  # fmt: skip
    return table


# ---- signals and exit statuses ----


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP: the terminal went away), raised in the main thread so that every ``finally`` runs and
    removes its temporary files and run directories; Python's default for both is to die without cleaning up."""


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_stop_signal(signum: int, _frame: Any) -> None:
    for sig in _STOP_SIGNALS:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(128 + signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` while the block runs (in the main thread)."""
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


# what the file system refuses (permissions, a read-only or full disk): the user's to fix, never a bug of ours
_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def run_command(func: Command, args: argparse.Namespace) -> int:
    """Run a command and map what it raised to an exit status: 0 success, 2 bad input (one line on stderr; a
    traceback only with --debug), 1 internal failure, 128+N a stop signal, 130 Ctrl-C."""
    from deepslim._threads import torch_threads

    try:
        # `deepslim --threads N COMMAND` sets the whole command's torch threads (the policy's default without it)
        with stop_signals_raise(), torch_threads(getattr(args, "global_threads", None)):
            return func(args)
    except Terminated as exc:
        err.print("deepslim: terminated; temporary files removed, earlier outputs left as they were")
        return int(exc.code or 0)
    except DeepSlimError as exc:
        if args.debug:
            raise
        err.print(f"deepslim: error: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        err.print("deepslim: interrupted; temporary files removed, earlier outputs left as they were")
        return 130
    except BrokenPipeError:  # the reader (e.g. `| head`) closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in deepslim, not bad input -- unless the file system refused
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.errno in _REFUSALS:
            where = f" {exc.filename}" if exc.filename else ""
            err.print(f"deepslim: error: cannot access{where}: {(exc.strerror or str(exc)).lower()}; free space "
                      "or choose a location this user may write", markup=False)  # fmt: skip
            return 2
        err.print(f"deepslim: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
                  markup=False)  # fmt: skip
        return 1


# linear quantization's calibrations (deepslim.compress.quantize.Calibration), as --calibration takes them
CALIBRATIONS = ["auto", "minmax", "percentile", "mse", "entropy", "dynamic"]
AUTO_HELP = ("dynamic int8, ranges per batch, for a Hugging Face BERT-style sentence encoder that ONNX Runtime fuses "
             "(its fast int8 file); static minmax ranges for every other model")  # fmt: skip
