"""The report's charts, drawn by matplotlib and embedded as inline SVG: per-layer bars, the roofline, accuracy
against size and latency across runs with the Pareto front, sensitivity curves. Each returns the SVG text, or None
when the runs hold nothing to draw."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepslim.report.html import Run


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt.subplots(figsize=(width, height))


def layer_bars(run: Run) -> str | None:
    before, after = run.before, run.after
    if not before or not after or not before.get("layers") or not after.get("layers"):
        return None
    import numpy as np

    b = {ly["name"]: ly for ly in before["layers"] if ly["params"]}
    a = {ly["name"]: ly for ly in after["layers"] if ly["params"]}
    names = [n for n in b if n in a] or list(a)
    if not names:
        return None
    import matplotlib.pyplot as plt

    metrics = [("params", "parameters"), ("macs", "MACs"), ("archive_bytes", "bytes on disk"),
               ("sparsity", "sparsity"), ("bits", "bits per weight")]  # fmt: skip
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.35 * len(names) + 2), 2.0 * len(metrics)),
                             sharex=True)  # fmt: skip
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        def val(rows: dict[str, Any], n: str, key: str = key) -> float:
            ly = rows.get(n)
            if ly is None:
                return 0.0
            if key == "sparsity":
                return 1 - ly["nonzero_params"] / ly["params"] if ly["params"] else 0.0
            return float(ly.get(key) or 0.0)

        ax.bar(x - 0.2, [val(b, n) for n in names], 0.4, label=f"before ({before['stage']})", color="#8c959f")
        ax.bar(x + 0.2, [val(a, n) for n in names], 0.4, label=f"after ({after['stage']})", color="#0969da")
        ax.set_ylabel(label)
        if key in ("params", "macs", "archive_bytes") and max(val(b, n) for n in names) > 0:
            ax.set_yscale("symlog")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    fig.suptitle(f"{run.name}: per layer, before and after")
    return _svg(fig)


def roofline(run: Run) -> str | None:
    dev = run.metrics.get("device_profile")
    after, before = run.after, run.before
    if not dev or not after or not after.get("layers"):
        return None
    import numpy as np

    fig, ax = _figure(6.5, 4.0)
    xs = np.logspace(-2, 3, 200)
    bw = dev["mem_bandwidth_bytes_per_s"]
    for kind, peak in dev["peak_macs_per_s"].items():
        ax.plot(xs, np.minimum(peak, bw * xs), label=f"{kind} roof", linewidth=1)
    for rows, label, color in ((before, "before", "#8c959f"), (after, "after", "#0969da")):
        layers = (rows or {}).get("layers", [])
        pts = [(ly["intensity"], ly["macs"] / (ly["estimated_latency_ms"] / 1e3)) for ly in layers
               if ly["macs"] and ly.get("estimated_latency_ms") and ly["intensity"] > 0]  # fmt: skip
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, label=f"layers {label}", color=color, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte moved)")
    ax.set_ylabel("MACs per second (estimated)")
    ax.set_title(f"{run.name}: roofline on {dev['name']}")
    ax.legend(fontsize=7)
    return _svg(fig)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both counts: lower x (cost) and higher y (accuracy)."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def tradeoff(runs: list[Run], key: str, label: str, title: str) -> str | None:
    series = []
    for run in runs:
        pts = [(s[key], s["accuracy"], s["stage"]) for s in run.stages if s.get(key)]
        if pts:
            series.append((run.name, pts))
    if not series:
        return None
    fig, ax = _figure()
    everything = []
    for name, pts in series:
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", linewidth=0.8, label=name)
        for x, y, stage in pts:
            ax.annotate(stage, (x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        everything += [(p[0], p[1]) for p in pts]
    front = pareto(everything)
    ax.step([p[0] for p in front], [100 * p[1] for p in front], where="post", color="#cf222e", linewidth=1.5,
            label="Pareto front")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _svg(fig)


def sensitivity(run: Run) -> str | None:
    sens = run.metrics.get("sensitivity")
    if not sens:
        return None
    fig, ax = _figure()
    for layer, curve in sens.items():
        xs = sorted(float(k) for k in curve)
        ax.plot(xs, [100 * curve[str(x)] if str(x) in curve else 100 * curve[x] for x in xs], marker=".",
                label=layer)  # fmt: skip
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{run.name}: sensitivity per layer")
    ax.legend(fontsize=6, ncol=2)
    return _svg(fig)
