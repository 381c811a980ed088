"""``deepslim profile``: per-layer parameters, MACs, bytes and memory; latency and energy on a device."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from deepslim.cli._common import add_model_args, load, out, parse_shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-layer params, MACs, bytes, memory; latency and energy on a device")
    add_model_args(p)
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (default: the zoo model's own)")
    p.add_argument("--device", help="estimate latency and energy on this device (see `deepslim devices`)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--allow-unknown-ops", action="store_true", help="count unknown operators as zero MACs")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from deepslim.analysis import profile
    from deepslim.analysis._format import profile_rows, summary_lines

    shape = parse_shape(args.input_shape) if args.input_shape else None
    if args.model.endswith(".onnx"):
        prof = profile(args.model, device=args.device, strict=not args.allow_unknown_ops, input_shape=shape)
    else:
        model = load(args)
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
