"""``deepslim profile``: per-layer parameters, MACs, bytes and memory; latency and energy on a device."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from rich.table import Table

from deepslim.cli._common import add_model_args, default_input, load, out, parse_shape
from deepslim.errors import ConfigError, UnsupportedOpError

if TYPE_CHECKING:
    from deepslim.analysis.blocks import TimeProfile


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-layer params, MACs, bytes, memory; latency and energy on a device")
    add_model_args(p)
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (default: the zoo model's own)")
    p.add_argument("--device", help="estimate latency and energy on this device (see `deepslim devices`)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--allow-unknown-ops", action="store_true", help="count unknown operators as zero MACs")
    p.add_argument("--time", action="store_true",
                   help="for an .onnx file: time every node in ONNX Runtime and show where the time goes per block "
                        "(attention / FFN / embeddings / other)")
    p.add_argument("--runs", type=int, default=20, help="timed runs for --time, after 5 warm-up runs (default: 20)")
    p.add_argument("--time-threads", type=int, default=1, metavar="N",
                   help="ONNX Runtime intra-op threads for --time (default: 1)")
    t = p.add_argument_group("training memory (--training)")
    t.add_argument("--training", action="store_true",
                   help="profile one training step: weights, gradients, optimizer state, saved activations, peak")
    t.add_argument("--trainable", default="all",
                   help="what trains: all, bias, last, sparse:SPEC (e.g. sparse:bias,weight:2) (default: all)")
    t.add_argument("--optimizer", default="adam", choices=("adam", "sgd", "sgd-momentum"),
                   help="optimizer whose state counts (default: adam)")
    t.add_argument("--batch-size", type=int, help="training batch size (default: the example input's)")
    t.add_argument("--efficient", action="store_true",
                   help="plan with deepslim's memory-efficient layers (frozen layers keep no input) instead of stock")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from deepslim.analysis import profile, profile_rows, summary_lines

    shape = parse_shape(args.input_shape) if args.input_shape else None
    if args.training:
        return _training(args, shape)
    timed = _timed(args, shape)
    if args.model.endswith(".onnx"):
        try:
            prof = profile(args.model, device=args.device, strict=not args.allow_unknown_ops, input_shape=shape)
        except UnsupportedOpError as exc:
            if timed is None:
                raise
            return _timed_only(args, timed, str(exc))
    else:
        model = load(args)
        prof = profile(model, device=args.device, strict=not args.allow_unknown_ops, input_shape=shape,
                       name=args.model)  # fmt: skip
    if args.json:
        print(json.dumps({**prof.to_dict(), **({"measured": timed.to_dict()} if timed else {})}, indent=2))
        return 0
    if not out.is_terminal:  # piped or redirected: the plain table, never truncated to a terminal width
        print(prof if not args.quiet else "\n".join(summary_lines(prof)))
        if timed is not None:
            print(f"\n{timed}")
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
    if timed is not None:
        _print_timed(timed)
    return 0


def _timed(args: argparse.Namespace, shape: tuple[int, ...] | None) -> TimeProfile | None:
    """``profile --time``: the measured block view of an .onnx file (None without --time)."""
    if not args.time:
        return None
    if not args.model.endswith(".onnx"):
        raise ConfigError("profile --time measures an .onnx file: export the model first (deepslim export)")
    from deepslim.analysis.onnx_profile import time_onnx

    return time_onnx(args.model, input_shape=shape, runs=args.runs, threads=args.time_threads)


def _timed_only(args: argparse.Namespace, timed: TimeProfile, refusal: str) -> int:
    """``profile FILE --time`` when the count refuses: the measured view, and one line saying what was not counted."""
    line = f"MACs not counted: {refusal}"
    if args.json:
        print(json.dumps({"measured": timed.to_dict(), "not_counted": refusal}, indent=2))
    elif not out.is_terminal:
        print(f"{timed}\n{line}")
    else:
        _print_timed(timed)
        out.print(line, markup=False)
    return 0


def _print_timed(timed: TimeProfile) -> None:
    from deepslim.analysis import time_rows, time_summary_lines

    header, rows = time_rows(timed)
    table = Table(*header, title=f"measured time per block of {timed.model}")
    for col in table.columns[1:]:
        col.justify = "right"
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for line in time_summary_lines(timed):
        out.print(line)


def _training(args: argparse.Namespace, shape: tuple[int, ...] | None) -> int:
    """``profile --training``: the memory of one training step, per layer and in total; fits on ``--device``?"""

    from deepslim.analysis import human
    from deepslim.analysis.training import training_profile
    from deepslim.models import input_of_shape

    if args.model.endswith(".onnx"):
        raise ConfigError("profile --training needs a PyTorch model (zoo name, .pt, .pt2, file.py:factory), not ONNX")
    model = load(args)
    x = input_of_shape(model, shape) if shape else default_input(model)
    if x is None:
        raise ConfigError(f"{args.model} is not a zoo model, so its input shape is unknown: give --input-shape")
    uncovered: dict[str, str] = {}
    if args.efficient:
        from deepslim.train.ondevice import efficient_, uncovered_layers

        uncovered = uncovered_layers(efficient_(model))
    prof = training_profile(model, x, trainable=args.trainable, optimizer=args.optimizer,
                            batch_size=args.batch_size, device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps(prof.to_dict(), indent=2))
        return 0
    lines = str(prof).splitlines()
    print("\n".join(lines if not args.quiet else lines[len(prof.layers) + 1:]))
    kept = {n: prof.layer(n).saved_bytes for n in uncovered if n in {r.name for r in prof.layers}}
    if kept:
        print("no memory-efficient form, trained the stock way: " + ", ".join(
            f"{n} ({uncovered[n]}, keeps {human(b, 'B')})" for n, b in kept.items()))
    return 0
