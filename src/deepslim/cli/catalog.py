"""``deepslim models`` (the model zoo) and ``deepslim devices`` (the cost model's device profiles)."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from deepslim.cli._common import out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("devices", help="list device profiles for the cost model")
    p.add_argument("--host", action="store_true", help="also calibrate and show this machine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)


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
