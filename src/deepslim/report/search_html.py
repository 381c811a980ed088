"""A search's report: one self-contained HTML page (no network) with the interactive Pareto front.

Every trial is a point (accuracy against the search's other objective: latency, archive size, energy or peak
activation memory, each labelled with its unit, bytes as bytes); the Pareto front is joined by a line (only its
entries no other beats on the two axes drawn, :func:`front_line`), the uniform
family (one keep ratio everywhere) is drawn on the same axes, and the dense model, the chosen policy and the uniform
baseline are marked. Hovering a point shows its policy and measurement, clicking selects it: its per-layer policy is
drawn as bars (residual blocks kept or dropped, channels kept per group, int8 or float per layer, sparsity and k-means
bits where chosen; a group or layer inside a dropped block drawn as dropped, whatever value the policy carries for it)
and the recovery's searched hyper-parameters (kind ``hpo``) are written beside them and in the hover text. A second
plot sets the latency table's predictions against the end-to-end measurements. The page reads the search's JSON
(``search.json``) embedded in it; plain SVG and a few lines of JavaScript, like the run report.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from deepslim._io import atomic_path

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.3em} h2{font-size:1.05em;margin-top:1.6em}
svg{background:#fafafa;border:1px solid #ddd} .pt{cursor:pointer} .sel{stroke:#000;stroke-width:2.5}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:6px 8px;font-size:12px;
display:none;max-width:420px;white-space:pre-wrap;box-shadow:2px 2px 6px rgba(0,0,0,.15)}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left} .legend span{margin-right:1.2em;font-size:13px}
"""

_SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const W = 640, H = 400, M = {l: 60, r: 20, t: 20, b: 45};
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, parent) { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
function scale(vals, lo, hi) { let a = Math.min(...vals), b = Math.max(...vals); if (a === b) { a -= 1; b += 1; }
  const pad = (b - a) * 0.05; a -= pad; b += pad; return [v => lo + (v - a) / (b - a) * (hi - lo), a, b]; }
function bytes(v) { const a = Math.abs(v);
  return a >= 1e6 ? (v / 1e6).toPrecision(3) + ' MB' : a >= 1e3 ? (v / 1e3).toPrecision(3) + ' kB'
    : Math.round(v) + ' B'; }
function fmt(v, unit) { return unit === 'bytes' ? bytes(v) : v.toPrecision(3); }
function axes(svg, sx, sy, xl, yl, unit) {
  el('line', {x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b, stroke: '#444'}, svg);
  el('line', {x1: M.l, y1: M.t, x2: M.l, y2: H - M.b, stroke: '#444'}, svg);
  for (let i = 0; i <= 4; i++) {
    const xv = sx[1] + (sx[2] - sx[1]) * i / 4, yv = sy[1] + (sy[2] - sy[1]) * i / 4;
    el('text', {x: sx[0](xv), y: H - M.b + 15, 'font-size': 11, 'text-anchor': 'middle'}, svg)
      .textContent = fmt(xv, unit);
    el('text', {x: M.l - 5, y: sy[0](yv) + 4, 'font-size': 11, 'text-anchor': 'end'}, svg)
      .textContent = yv.toPrecision(3);
  }
  el('text', {x: (M.l + W - M.r) / 2, y: H - 8, 'font-size': 12, 'text-anchor': 'middle'}, svg).textContent = xl;
  const t = el('text', {x: 14, y: (M.t + H - M.b) / 2, 'font-size': 12, 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})`}, svg); t.textContent = yl;
}
const tip = document.getElementById('tip');
function dropped(c) { return Object.entries(c.policy.drop || {}).filter(([, v]) => v).map(([k]) => k); }
function inside(name, blocks) { return blocks.some(b => name === b || name.startsWith(b + '.')); }
function recovery(c) { return Object.entries(c.policy.recovery || {}).map(([k, v]) => `${k} ` +
  (v === null ? (k === 'temperature' ? 'none (labels only)' : 'none') : v)).join(', '); }
function describe(c, label) {
  const m = c.measurement || {}, p = c.policy, gone = dropped(c);
  const keep = Object.entries(p.keep || {}).map(([k, v]) => `  ${k}: ${inside(k, gone) ? 'dropped' : v}`)
    .join('\n');
  const q = Object.entries(p.int8 || {}).filter(([k, v]) => v && !inside(k, gone)).map(([k]) => k).join(', ')
    || 'none';
  const rec = recovery(c);
  return `${label}${c.trial !== null && c.trial !== undefined ? ' (trial ' + c.trial + ')' : ''}\n` +
    `accuracy ${c.accuracy === null ? 'n/a' : c.accuracy.toFixed(4)}\nlatency ${c.latency_ms.toFixed(4)} ms` +
    (c.measured_latency_ms ? ` (measured ${c.measured_latency_ms.toFixed(4)})` : ' (predicted)') +
    (c.archive_bytes != null ? `\narchive ${c.archive_bytes.toLocaleString('en')} B` : '') +
    (c.energy_uj != null ? `\nenergy ${c.energy_uj.toPrecision(4)} µJ (estimated)` : '') +
    (c.peak_activation_bytes != null ? `\npeak activation memory ${c.peak_activation_bytes.toLocaleString('en')} B`
      : '') +
    `\nMACs ${m.macs}\nwithin budget: ${c.feasible ? 'yes' : 'no'}` +
    (p.drop ? `\nblocks dropped: ${gone.length ? gone.join(', ') : 'none'} (${gone.length} of ` +
      `${Object.keys(p.drop).length})` : '') +
    (rec ? `\nrecovery: ${rec}` : '') +
    `\nchannels kept:\n${keep || '  (none searched)'}\nint8 layers: ${q}`;
}
let selected = null;
function select(c, node, label) {
  if (selected) selected.classList.remove('sel'); selected = node; node.classList.add('sel');
  document.getElementById('chosen').textContent = describe(c, label).split('\n')[0];
  bars(c);
}
function bars(c) {
  const svg = document.getElementById('bars'); svg.innerHTML = '';
  const groups = (D.space.groups || []);
  const layers = (D.space.int8_layers || []);
  const gone = dropped(c), out = n => gone.find(b => inside(n, [b]));
  const blocks = (D.space.blocks || Object.keys(c.policy.drop || {})).map(b => gone.includes(b)
    ? {name: b, frac: 0, text: 'dropped', fill: '#999'} : {name: b, frac: 1, text: 'kept', fill: '#4a7ab5'});
  const rows = groups.map(g => out(g.name) ? {name: g.name, frac: 0, text: `dropped (block ${out(g.name)})`}
    : {name: g.name, frac: (c.policy.keep[g.name] ?? g.width) / g.width,
      text: `${c.policy.keep[g.name] ?? g.width} / ${g.width} channels`});
  const q8 = c.policy.int8 || {};
  const extra = [...Object.entries(c.policy.sparsity || {}).filter(([n, v]) => v > 0 && !out(n)).map(([n, v]) =>
      ({name: n, frac: 1 - v, text: `sparsity ${v}`, fill: '#6a9f58'})),
    ...Object.entries(c.policy.kmeans || {}).filter(([n, v]) => v > 0 && !q8[n] && !out(n)).map(([n, v]) =>
      ({name: n, frac: v / 8, text: `k-means ${v} bits`, fill: '#8e6bb0'}))];
  const rec = recovery(c);
  const h = 18, y0 = 10;
  let y = y0;
  const row = (name, frac, fill, text) => {
    el('text', {x: 170, y: y + 12, 'font-size': 11, 'text-anchor': 'end'}, svg).textContent = name;
    el('rect', {x: 175, y: y + 2, width: 300 * frac, height: h - 5, fill: fill}, svg);
    el('text', {x: 480, y: y + 12, 'font-size': 11}, svg).textContent = text; y += h; };
  blocks.forEach(r => row(r.name, r.frac, r.fill, r.text)); if (blocks.length) y += h;
  rows.forEach(r => row(r.name, r.frac, '#4a7ab5', r.text));
  y += h;
  layers.forEach(n => { const q = q8[n], b = out(n);
    row(n, b ? 0 : q ? 0.5 : 1, q ? '#d9822b' : '#999', b ? 'dropped' : q ? 'int8' : 'float'); });
  if (extra.length) y += h;
  extra.forEach(r => row(r.name, r.frac, r.fill, r.text));
  if (rec) { y += h; el('text', {x: 175, y: y + 12, 'font-size': 11}, svg).textContent = `recovery: ${rec}`;
    y += h; }
  svg.setAttribute('height', y + 10);
}
function point(svg, c, x, y, opts, label) {
  const n = el(opts.shape || 'circle', {class: 'pt', 'data-label': label, 'data-trial': c.trial ?? '',
    ...opts.attrs(x, y)}, svg);
  n.addEventListener('mousemove', e => { tip.style.display = 'block'; tip.textContent = describe(c, label);
    tip.style.left = (e.clientX + 14) + 'px'; tip.style.top = (e.clientY + 10) + 'px'; });
  n.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
  n.addEventListener('click', () => select(c, n, label));
  return n;
}
function front() {
  const svg = document.getElementById('front'), A = D.axis, X = c => c[A.key];
  const shown = c => c && c.accuracy !== null && X(c) != null;
  const all = [...D.trials, ...D.uniform_family, D.dense, D.best, D.uniform].filter(shown);
  const sx = scale(all.map(X), M.l, W - M.r), sy = scale(all.map(c => c.accuracy), H - M.b, M.t);
  axes(svg, sx, sy, A.label, 'accuracy', A.unit);
  const lim = A.limit;
  if (lim) el('line', {x1: sx[0](lim), x2: sx[0](lim), y1: M.t, y2: H - M.b, stroke: '#c33',
    'stroke-dasharray': '4 3'}, svg);
  const pf = D.front_line.map(i => D.pareto[i]);
  if (pf.length > 1) el('polyline', {points: pf.map(c => `${sx[0](X(c))},${sy[0](c.accuracy)}`).join(' '),
    fill: 'none', stroke: '#4a7ab5', 'stroke-width': 1.5}, svg);
  const dot = (r, fill) => ({attrs: (x, y) => ({cx: x, cy: y, r: r, fill: fill, 'fill-opacity': 0.8})});
  D.trials.filter(shown).forEach(c => point(svg, c, sx[0](X(c)), sy[0](c.accuracy),
    dot(4, c.feasible ? '#9bb' : '#ddd'), 'trial'));
  D.uniform_family.filter(shown).forEach(c => point(svg, c, sx[0](X(c)), sy[0](c.accuracy),
    {shape: 'rect', attrs: (x, y) => ({x: x - 4, y: y - 4, width: 8, height: 8, fill: '#d9822b',
      'fill-opacity': 0.7})}, 'uniform family'));
  pf.forEach(c => point(svg, c, sx[0](X(c)), sy[0](c.accuracy), dot(5, '#4a7ab5'), 'Pareto front'));
  const marks = [['dense', '#222'], ['uniform', '#b35900'], ['best', '#1a9850']];
  let first = null;
  marks.forEach(([k, col]) => { const c = D[k]; if (!shown(c)) return;
    const n = point(svg, c, sx[0](X(c)), sy[0](c.accuracy), dot(7, col), k);
    if (k === 'best') first = [c, n, k]; });
  if (first) select(...first);
}
function predicted() {
  const svg = document.getElementById('pred'); const rows = (D.latency_table.rows || []);
  if (!rows.length) { svg.style.display = 'none'; return; }
  const v = rows.flatMap(r => [r.predicted_ms, r.measured_ms]);
  const s = scale(v, M.l, W - M.r), t = scale(v, H - M.b, M.t);
  axes(svg, s, t, 'measured end to end (ms)', 'predicted by the ' +
    (D.latency_table.latency_model === 'nodes' ? 'node' : 'layer') + ' table (ms)', 'ms');
  el('line', {x1: s[0](s[1]), y1: t[0](s[1]), x2: s[0](s[2]), y2: t[0](s[2]), stroke: '#aaa',
    'stroke-dasharray': '3 3'}, svg);
  rows.forEach(r => el('circle', {cx: s[0](r.measured_ms), cy: t[0](r.predicted_ms), r: 4, fill: '#4a7ab5'}, svg));
}
front(); predicted();
"""


# objective -> (the candidate's key in search.json, the axis label, its unit: ticks of "bytes" read as B, kB, MB)
AXES = {"latency": ("latency_ms", "latency (ms, batch 1)", "ms"),
        "size": ("archive_bytes", "archive size (bytes of the .dsz)", "bytes"),
        "energy": ("energy_uj", "energy (µJ per inference, estimated)", "uJ"),
        "memory": ("peak_activation_bytes", "peak activation memory (bytes, batch 1)", "bytes")}  # fmt: skip
# table columns beyond latency and archive bytes, shown when the search used the metric (objective or budget)
_COLUMNS = {"energy": ("energy µJ", "energy_uj"), "memory": ("peak activation B", "peak_activation_bytes")}


def axis(doc: dict[str, Any]) -> dict[str, Any]:
    """The front's horizontal axis: the search's first objective besides accuracy (latency when there is none),
    its key in each candidate, label, unit and budget limit."""
    metric = next((o for o in doc.get("objectives", []) if o in AXES), "latency")
    key, label, unit = AXES[metric]
    return {"metric": metric, "key": key, "label": label, "unit": unit,
            "limit": (doc.get("limits") or {}).get(metric)}  # fmt: skip


def front_line(doc: dict[str, Any], key: str) -> list[int]:
    """The entries of ``doc["pareto"]`` the page joins by a line, by ``key`` (the horizontal axis) ascending: those
    no other entry beats on both axes (accuracy up, ``key`` down). Only a front is drawn as one: a search of three
    objectives has front points that lose on these two, and a single-objective search.json written before session
    14's fix holds the finals' pool (the best models by accuracy, a slower one among them) under ``pareto``."""
    shown = [(c[key], c["accuracy"], i) for i, c in enumerate(doc.get("pareto") or [])
             if c and c.get("accuracy") is not None and c.get(key) is not None]  # fmt: skip
    line: list[int] = []
    best = float("-inf")
    for _, acc, i in sorted(shown, key=lambda t: (t[0], -t[1])):
        if acc > best:
            line.append(i)
            best = acc
    return line


def _cell(value: Any, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):,}" if unit == "bytes" else f"{value:.4g}"


def search_report_html(doc: dict[str, Any], *, title: str = "deepslim search") -> str:
    """The report page of a search's JSON (``SearchResult.to_dict()`` or ``search.json``)."""
    lt, cost = doc.get("latency_table", {}), doc.get("cost", {})
    budget = ", ".join(b.get("text", "") for b in doc.get("budget", [])) or "none"
    used = set(doc.get("objectives", [])) | {b.get("metric", b.get("text", "").partition("=")[0])
                                             for b in doc.get("budget", [])}  # fmt: skip
    extra = [(m, *_COLUMNS[m]) for m in _COLUMNS if m in used]
    rows = []
    for label in ("dense", "uniform", "best"):
        c = doc.get(label)
        if c is None:
            rows.append(f"<tr><td>{label}</td><td colspan={6 + len(extra)}>no policy within budget</td></tr>")
            continue
        acc = "n/a" if c.get("accuracy") is None else f"{c['accuracy']:.4f}"
        meas = "n/a" if c.get("measured_latency_ms") is None else f"{c['measured_latency_ms']:.4f}"
        size = _cell(c.get("archive_bytes"), "bytes")
        more = "".join(f"<td>{_cell(c.get(key), AXES[m][2])}</td>" for m, _, key in extra)
        verdict = html.escape(str((c.get("remeasured") or {}).get("verdict", "not re-measured")))
        within = "yes" if c.get("feasible") else "no"
        rows.append(f"<tr><td>{label}</td><td>{acc}</td><td>{c['latency_ms']:.4f}</td><td>{meas}</td>"
                    f"<td>{size}</td>{more}<td>{within}</td><td>{verdict}</td></tr>")  # fmt: skip
    table_line = "no end-to-end checks"
    if lt.get("error_p90") is not None:
        def tau(key: str) -> str:
            return "n/a" if lt.get(key) is None else f"{lt[key]:.2f}"

        model = "node" if lt.get("latency_model") == "nodes" else "layer"
        table_line = (f"{model} table: relative error p90 {lt['error_p90']:.1%}, Kendall τ {tau('kendall_tau')} "
                      f"(MAC count: τ {tau('mac_proxy_kendall_tau')}) over {lt['points']} measurements")
    drawn = axis(doc)
    data = json.dumps({**doc, "axis": drawn, "front_line": front_line(doc, drawn["key"])},
                      default=str).replace("</", "<\\/")  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Budget: {html.escape(budget)}. {cost.get('trials', 0)} trials, {cost.get('wall_s', 0):.0f} s wall,
{cost.get('cpu_s', 0):.0f} CPU-s (~{cost.get('energy_kwh', 0):.2g} kWh, estimated).</p>
<table><tr><th>policy</th><th>accuracy</th><th>latency ms</th><th>measured ms</th><th>archive B</th>
{''.join(f"<th>{html.escape(head)}</th>" for _, head, _ in extra)}<th>within budget</th><th>re-measured</th></tr>
{''.join(rows)}</table>
<h2>Pareto front</h2>
<div class="legend"><span style="color:#4a7ab5">● Pareto front</span><span style="color:#9bb">● trials</span>
<span style="color:#d9822b">■ uniform family</span><span>● dense</span><span style="color:#1a9850">● best</span>
<span style="color:#c33">- - budget</span></div>
<svg id="front" width="640" height="400"></svg>
<h2>Policy of the selected point: <span id="chosen"></span></h2>
<svg id="bars" width="640" height="100"></svg>
<h2>Predicted vs measured latency</h2><p>{html.escape(table_line)}</p>
<svg id="pred" width="640" height="400"></svg>
<div id="tip"></div>
<script type="application/json" id="data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_search_report(doc: dict[str, Any], path: str | os.PathLike[str], *, title: str = "deepslim search") -> None:
    """Write the report page atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(search_report_html(doc, title=title), encoding="utf-8")
