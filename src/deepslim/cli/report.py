"""``deepslim report``: one self-contained HTML report from run directories."""

from __future__ import annotations

import argparse
import json

from deepslim.cli._common import err, out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report (cards, tables, charts) from run directories")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by deepslim compress / demo")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default="deepslim report")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from deepslim.report import write_report  # looked up at call time (tests replace it)

    result = write_report(args.runs, args.output, title=args.title)
    if args.json:
        print(json.dumps({"path": str(result.path), "runs": result.runs, "charts": result.charts,
                          "problems": list(result.problems)}, indent=2))  # fmt: skip
        return 0
    for problem in result.problems:
        err.print(f"warning: {problem}", markup=False)
    out.print(f"wrote {result.path}: {result.runs} run(s), {result.charts} charts")
    return 0
