"""Reports: one self-contained HTML file from one or more run directories.

Summary cards (before → after with ratios), per-layer tables and bar charts, a roofline chart of every layer on the
run's device, accuracy-vs-size and accuracy-vs-latency across runs with the Pareto front marked, sensitivity curves
when a run has them, and the recipe of each run. Charts are drawn by matplotlib and embedded as inline SVG: the
file opens without a network.

Importing this package has every recipe run write its ``report.html`` (registered with the pipeline, which sits
below the report and does not import it).
"""

from pathlib import Path

from deepslim.pipeline.run import register_run_file
from deepslim.report.html import ReportResult, load_run, render_report, write_report

__all__ = ["ReportResult", "load_run", "render_report", "write_report"]


def _run_report(run_dir: Path, dest: Path, title: str) -> ReportResult:
    return write_report([run_dir], dest, title=title)


register_run_file("report", "report.html", _run_report)
