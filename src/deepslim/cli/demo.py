"""``deepslim demo``: Deep Compression of LeNet-5 on the digits, end to end, every stage measured."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from deepslim.cli._common import Progress, fmt_bytes, nonneg_int, out, stage_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Deep Compression of LeNet-5 on digits, end to end, measured")
    p.add_argument("--epochs", type=nonneg_int, help="initial training epochs (default: the recipe's 30)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--device", default="cortex-m7")
    p.add_argument("--out", default="deepslim-demo", help="run directory the demo writes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--json", action="store_true", help="print the before/after measurements as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import deepslim.report  # noqa: F401  (every run writes its report.html)
    from deepslim.pipeline.demo import RECIPE, run_demo

    with Progress(args.quiet or args.json) as progress:
        result = run_demo(args.out, epochs=args.epochs, seed=args.seed, device=args.device, overwrite=args.overwrite,
                          on_event=progress)  # fmt: skip
    before, after = result.before, result.after
    if args.json:
        print(json.dumps({"before": before, "after": after, "decoded_accuracy": result.decoded_accuracy,
                          "run": str(result.run.out)}, indent=2, default=str))  # fmt: skip
        return 0
    out.print(f"[bold]deepslim demo[/bold]: Deep Compression ({RECIPE}) of LeNet-5 on the scikit-learn digits")
    out.print(stage_table(result.run.metrics, "every stage, measured"))
    dev = args.device
    table = Table("", "trained", "compressed", "change", title="LeNet-5 before and after")
    rows = [
        ("test accuracy", f"{100 * before['accuracy']:.2f} %", f"{100 * after['accuracy']:.2f} %",
         f"{100 * (after['accuracy'] - before['accuracy']):+.2f} pp"),
        ("nonzero parameters", f"{before['nonzero_params']:,}", f"{after['nonzero_params']:,}",
         f"{before['nonzero_params'] / after['nonzero_params']:.1f}x fewer"),
        ("bytes on disk (.dsz archive)", fmt_bytes(before["archive_bytes"]), fmt_bytes(after["archive_bytes"]),
         f"{before['archive_bytes'] / after['archive_bytes']:.1f}x smaller"),
        ("MACs per image (dense kernels)", f"{before['macs']:,}", f"{after['macs']:,}",
         "same: masks do not skip work on dense kernels"),
        (f"energy per image on {dev} (est.)", f"{before['estimated_energy_uj']:.2f} uJ",
         f"{after['estimated_energy_uj']:.2f} uJ",
         f"{before['estimated_energy_uj'] / after['estimated_energy_uj']:.1f}x less"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"the archive {result.run.artifacts['archive']} decodes to a model with test accuracy "
              f"{100 * result.decoded_accuracy:.2f} % (bit-exact weights); run directory: {result.run.out}; "
              f"report: {result.run.artifacts.get('report', 'not written')}")
    return 0
