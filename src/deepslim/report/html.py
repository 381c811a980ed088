"""Rendering run directories into one self-contained HTML report."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepslim._io import atomic_path
from deepslim.errors import ConfigError
from deepslim.report.charts import layer_bars, roofline, sensitivity, tradeoff

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:1.05em;margin:18px 0 6px}.muted{color:#57606a}.notice{background:#fff8c5;border:1px solid #d4a72c;
padding:8px 12px;border-radius:6px;margin:8px 0}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:170px}.card .k{font-size:.85em;
color:#57606a}.card .v{font-size:1.25em;font-weight:600}.card .r{font-size:.85em;color:#57606a}
.card .r.better{color:#1a7f37}.card .r.worse{color:#cf222e}
table{border-collapse:collapse;font-size:.85em;margin:6px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;
text-align:right}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
figure.chart{margin:10px 0;display:inline-block}figure.chart svg{max-width:100%;height:auto}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow:auto;font-size:.85em}
"""
# marks every chart's box on the page (the browser test reads it to check that each chart was drawn)
SCRIPT = """
window.addEventListener('load', function () {
  var boxes = Array.prototype.map.call(document.querySelectorAll('figure.chart'), function (f) {
    var r = f.getBoundingClientRect();
    return {id: f.id, x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
  });
  document.body.setAttribute('data-charts', JSON.stringify(boxes));
});
"""


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    recipe: str | None
    notes: list[str] = field(default_factory=list)  # what is missing or malformed, each said once
    label: str = ""  # the run's name in the report, unique among the runs shown (see :func:`unique_labels`)

    @property
    def name(self) -> str:
        return self.label or self.path.name or str(self.path)

    @property
    def problems(self) -> list[str]:
        return [f"{self.name}: {note}" for note in self.notes]

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.metrics.get("stages", [])

    def stage(self, kind: str) -> dict[str, Any] | None:
        return next((s for s in reversed(self.stages) if s.get("stage") == kind), None)

    @property
    def before(self) -> dict[str, Any] | None:
        return self.stage("train") or (self.stages[0] if self.stages else None)

    @property
    def after(self) -> dict[str, Any] | None:
        return self.stages[-1] if self.stages else None


@dataclass(frozen=True)
class ReportResult:
    path: Path
    runs: int
    charts: int
    problems: tuple[str, ...]


STAGE_KEYS = ("stage", "accuracy", "params", "nonzero_params", "macs")


def load_run(path: str | os.PathLike[str]) -> Run:
    """A run directory's metrics and recipe; raises ConfigError when it is not a run at all."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"{d} is not a directory (a run directory holds metrics.json, written by deepslim compress)")
    mfile = d / "metrics.json"
    if not mfile.is_file():
        raise ConfigError(f"{d} is not a run: metrics.json is missing (deepslim compress --out {d} writes one)")
    try:
        metrics = json.loads(mfile.read_text())
    except ValueError as exc:
        raise ConfigError(f"{mfile} is not valid JSON: {exc}") from None
    if not isinstance(metrics, dict) or metrics.get("format") != "deepslim-run":
        raise ConfigError(f"{mfile} is not a deepslim run's metrics (no 'format: deepslim-run')")
    recipe = (d / "recipe.yaml").read_text() if (d / "recipe.yaml").is_file() else None
    run = Run(d, metrics, recipe)
    if recipe is None:
        run.notes.append("recipe.yaml is missing")
    stages = metrics.get("stages")
    if not isinstance(stages, list) or not stages:
        run.notes.append("metrics.json has no stages")
        metrics["stages"] = []
    else:
        for s in stages:
            missing = [k for k in STAGE_KEYS if k not in s]
            if missing:
                run.notes.append(f"stage {s.get('index', '?')} ({s.get('stage', '?')}) lacks {', '.join(missing)}")
        metrics["stages"] = [s for s in stages if all(k in s for k in STAGE_KEYS)]
        if not any(s.get("layers") for s in metrics["stages"]):
            run.notes.append("no per-layer measurements (layer charts left out)")
    return run


def unique_labels(paths: list[Path]) -> list[str]:
    """Names for run directories that tell them apart: the directory's name, or as many of its parents as it takes
    (``a/run`` and ``b/run``); the same directory given twice is numbered."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    distinct = set(parts)  # the same directory twice is told apart by number below, not by depth
    depth = 1
    while depth < max(len(ps) for ps in parts) and len({ps[-depth:] for ps in distinct}) < len(distinct):
        depth += 1
    labels = ["/".join(ps[-depth:]).lstrip("/") or str(p) for ps, p in zip(parts, paths, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for lb in labels:
        seen[lb] = seen.get(lb, 0) + 1
        out.append(lb if labels.count(lb) == 1 else f"{lb} (#{seen[lb]})")
    return out


# -- HTML ----------------------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    """A measured value with its unit (``unit`` starts with the space it needs), "n/a" when it was not measured."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4g}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return html.escape(str(value))


# (key, label, unit, which way is better): accuracy is better higher; size, work, time and energy lower
CARDS = [("accuracy", "test accuracy", "%", "higher"), ("archive_bytes", "bytes on disk (.dsz)", " B", "lower"),
         ("nonzero_params", "nonzero parameters", " params", "lower"), ("macs", "MACs", " MACs", "lower"),
         ("measured_latency_ms", "latency (measured)", " ms", "lower"),
         ("estimated_latency_ms", "latency (estimated)", " ms", "lower"),
         ("estimated_energy_uj", "energy (estimated)", " µJ", "lower")]  # fmt: skip


def change(before: float | None, after: float, better: str) -> tuple[str, str]:
    """(what changed, "better" | "worse" | "same") from ``before`` to ``after`` of a metric that is better
    ``"higher"`` (accuracy: a difference in percentage points) or ``"lower"`` (a ratio: "2.00× smaller")."""
    if before is None:
        return "", "same"
    verdict = "same" if after == before else "better" if (after > before) == (better == "higher") else "worse"
    if better == "higher":
        return f"{100 * (after - before):+.2f} pp", verdict
    if after == before:
        return "unchanged", verdict
    if after and before:
        return (f"{before / after:.2f}× smaller", verdict) if after < before else (f"{after / before:.2f}× larger",
                                                                                   verdict)  # fmt: skip
    return ("down to 0", verdict) if not after else ("up from 0", verdict)


def _cards(run: Run) -> str:
    before, after = run.before, run.after
    if not before or not after:
        return '<p class="notice">no stages to summarize</p>'
    out = []
    for key, label, unit, better in CARDS:
        b, a = before.get(key), after.get(key)
        if a is None:
            continue
        if unit == "%":
            val = f"{'n/a' if b is None else f'{100 * b:.2f}%'} → {100 * a:.2f}%"
        else:
            val = f"{_fmt(b, unit)} → {_fmt(a, unit)}"
        text, verdict = change(b, a, better)
        out.append(f'<div class="card"><div class="k">{label}</div><div class="v">{val}</div>'
                   f'<div class="r {verdict}">{text}</div></div>')  # fmt: skip
    return f'<div class="cards">{"".join(out)}</div>'


def _stage_table(run: Run) -> str:
    cols = [("stage", "stage"), ("accuracy", "accuracy"), ("params", "params"), ("nonzero_params", "nonzero"),
            ("macs", "MACs"), ("archive_bytes", "archive B"), ("estimated_latency_ms", "est. ms"),
            ("measured_latency_ms", "measured ms"), ("estimated_energy_uj", "est. energy uJ"),
            ("seconds", "s"), ("load_average", "machine load")]  # fmt: skip
    head = "".join(f"<th>{c}</th>" for _, c in cols)
    rows = []
    for s in run.stages:  # a row is a Measurement's (metrics.json version 2) or version 1's (no runtime, no load)
        cells = []
        for key, _ in cols:
            v = s.get(key)
            if key == "accuracy" and v is not None:
                cells.append(f"<td>{100 * v:.2f}%</td>")
            elif key == "measured_latency_ms" and v is not None and s.get("runtime"):
                threads = s.get("threads")
                where = f"{s['runtime']}, {threads} thread{'s' if threads != 1 else ''}" if threads else s["runtime"]
                cells.append(f"<td>{_fmt(v)} ({html.escape(where)})</td>")
            elif key == "load_average":  # the 1-minute load average while the stage was measured
                cells.append(f"<td>{_fmt(v[0] if isinstance(v, list) and v else None)}</td>")
            else:
                cells.append(f"<td>{_fmt(v)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _layer_table(run: Run) -> str:
    before, after = run.before, run.after
    if not after or not after.get("layers"):
        return ""
    b = {ly["name"]: ly for ly in (before or {}).get("layers", [])}
    head = ("<tr><th>layer</th><th>type</th><th>params</th><th>nonzero before → after</th><th>MACs</th>"
            "<th>bytes on disk before → after</th><th>bits/weight</th><th>bound</th></tr>")  # fmt: skip
    rows = []
    for ly in after["layers"]:
        old = b.get(ly["name"], {})
        kind = ly["type"].removeprefix("Parametrized")  # a masked or shared layer is still its own kind
        rows.append(f"<tr><td>{html.escape(ly['name'])}</td><td>{html.escape(kind)}</td>"
                    f"<td>{_fmt(ly['params'])}</td><td>{_fmt(old.get('nonzero_params'))} → "
                    f"{_fmt(ly['nonzero_params'])}</td><td>{_fmt(ly['macs'])}</td>"
                    f"<td>{_fmt(old.get('archive_bytes'))} → {_fmt(ly.get('archive_bytes'))}</td>"
                    f"<td>{_fmt(ly.get('bits'))}</td><td>{_fmt(ly.get('bound'))}</td></tr>")  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>"


def render_report(runs: list[Run], *, title: str = "deepslim report") -> tuple[str, int]:
    """The report's HTML and how many charts it holds. Runs are labelled so that no two look alike."""
    for run, label in zip(runs, unique_labels([r.path for r in runs]), strict=True):
        run.label = label
    charts = 0
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{len(runs)} run(s): {", ".join(html.escape(r.name) for r in runs)}</p>']  # fmt: skip

    def chart(svg: str | None, cid: str, caption: str) -> None:
        nonlocal charts
        if svg is None:
            return
        charts += 1
        parts.append(f'<figure class="chart" id="{cid}">{svg}<figcaption class="muted">{html.escape(caption)}'
                     "</figcaption></figure>")  # fmt: skip

    problems = [p for r in runs for p in r.problems]
    for p in problems:
        parts.append(f'<p class="notice">{html.escape(p)}</p>')
    if len(runs) > 1 or any(len(r.stages) > 1 for r in runs):
        parts.append("<h2>Trade-offs across runs</h2>")
        chart(tradeoff(runs, "archive_bytes", "bytes on disk (.dsz archive)", "accuracy vs size"), "tradeoff-size",
              "every stage of every run; the red line is the Pareto front (nothing is both smaller and more "
              "accurate)")  # fmt: skip
        has_measured = any(s.get("measured_latency_ms") for r in runs for s in r.stages)
        key = "measured_latency_ms" if has_measured else "estimated_latency_ms"
        axis = f"latency, ms ({'measured' if has_measured else 'estimated on the device'})"
        chart(tradeoff(runs, key, axis, "accuracy vs latency"), "tradeoff-latency",
              "measured in ONNX Runtime where a run has an export stage; otherwise the cost model's estimate")
    for i, run in enumerate(runs):
        m = run.metrics
        parts.append(f"<h2>{html.escape(run.name)}</h2><p class='muted'>model {_fmt(m.get('model'))}, data "
                     f"{_fmt(m.get('data'))}, device {_fmt(m.get('device'))}, "
                     f"seed {_fmt(m.get('seed'))}</p>")
        parts.append(_cards(run))
        parts.append("<h3>Stages</h3>" + _stage_table(run))
        chart(layer_bars(run), f"layers-{i}", "parameters, MACs, bytes on disk, sparsity and bits per weight of "
              "every layer, before and after")  # fmt: skip
        chart(roofline(run), f"roofline-{i}", "each layer's arithmetic intensity and estimated attainable rate "
              "under the device's compute and bandwidth roofs")  # fmt: skip
        chart(sensitivity(run), f"sensitivity-{i}", "accuracy after pruning each layer alone")
        table = _layer_table(run)
        if table:
            parts.append("<h3>Layers</h3>" + table)
        if run.recipe is not None:
            parts.append(f"<h3>Recipe</h3><pre>{html.escape(run.recipe)}</pre>")
        artifacts = m.get("artifacts") or {}
        if artifacts:
            parts.append("<h3>Artifacts</h3><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>"
                                                           for k, v in artifacts.items()) + "</ul>")  # fmt: skip
    body = "\n".join(parts)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{body}</body></html>")  # fmt: skip
    return page, charts


def write_report(run_dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 title: str = "deepslim report") -> ReportResult:  # fmt: skip
    """Render ``run_dirs`` into the HTML file ``out`` (atomically)."""
    if not run_dirs:
        raise ConfigError("report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    page, charts = render_report(runs, title=title)  # labels the runs (their problems name them by label)
    dest = Path(out)
    with atomic_path(dest) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return ReportResult(dest, len(runs), charts, tuple(p for r in runs for p in r.problems))
