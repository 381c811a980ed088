"""Plain-text rendering of a Profile (the CLI renders the same columns with rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepslim.analysis.blocks import TimeProfile
    from deepslim.analysis.profile import Profile


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes use binary prefixes when unit is 'B'."""
    if unit == "B":
        for prefix in ("", "Ki", "Mi", "Gi"):
            if abs(n) < 1024 or prefix == "Gi":
                return f"{n:.0f} B" if prefix == "" else f"{n:.2f} {prefix}B"
            n /= 1024
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f}{unit}" if prefix == "" else f"{n:.3g}{prefix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def profile_rows(profile: Profile) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-layer table, with the device estimate's columns when there is one."""
    header = ["layer", "type", "output", "params", "MACs", "weights", "act out", "MAC/B"]
    cost = profile.cost
    if cost is not None:
        header += ["latency ms", "bound", "energy uJ"]
    rows = []
    for lp in profile.layers:
        shape = "x".join(map(str, lp.output_shape)) if lp.output_shape else "-"
        row = [lp.name or "(model)", lp.type, shape, human(lp.params), human(lp.macs), human(lp.weight_bytes, "B"),
               human(lp.output_bytes, "B"), f"{lp.arithmetic_intensity:.1f}"]  # fmt: skip
        if cost is not None:
            lc = next((c for c in cost.layers if c.name == lp.name), None)
            row += ["-", "-", "-"] if lc is None else [f"{lc.latency_ms:.3f}", lc.bound, f"{lc.energy_uj:.2f}"]
        rows.append(row)
    return header, rows


def summary_lines(profile: Profile) -> list[str]:
    shapes = ", ".join("x".join(map(str, s)) for s in profile.input_shapes)
    lines = [
        f"model {profile.model}  input {shapes}",
        f"params {profile.params:,}  MACs {profile.macs:,} ({human(profile.macs)})  "
        f"other ops {human(profile.other_ops)}",
        f"weights {human(profile.weight_bytes, 'B')}  activations written {human(profile.activation_bytes, 'B')}  "
        f"peak activation memory {human(profile.peak_activation_bytes, 'B')}  "
        f"intensity {profile.arithmetic_intensity:.1f} MAC/B",
    ]
    if profile.cost is not None:
        c = profile.cost
        lines.append(
            f"on {c.device.name}: latency {c.latency_ms:.3f} ms (roofline estimate, "
            f"{100 * c.memory_bound_fraction:.0f}% in memory-bound layers)  energy {c.energy_uj:.1f} uJ "
            f"(compute {c.energy_compute_uj:.1f}, on-chip {c.energy_onchip_uj:.1f}, "
            f"off-chip {c.energy_offchip_uj:.1f})"
        )
        lines.append(
            f"fits on chip ({human(c.device.onchip_bytes, 'B')}): weights {'yes' if c.weights_fit_on_chip else 'no'}, "
            f"peak activations {'yes' if c.activations_fit_on_chip else 'no'}"
        )
    lines += [f"warning: {w}" for w in profile.warnings]
    return lines


def format_profile(profile: Profile) -> str:
    header, rows = profile_rows(profile)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2}

    def fmt(r: list[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(cells))

    body = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)]
    return "\n".join(body + [""] + summary_lines(profile))


def time_rows(prof: TimeProfile) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the measured block table: ms per group, the block's total and its share of all nodes."""
    from deepslim.analysis.blocks import GROUPS

    total = prof.node_us or 1.0
    header = ["block", *(f"{g} ms" for g in GROUPS), "total ms", "share"]

    def cells(name: str, us: dict[str, float]) -> list[str]:
        s = sum(us.values())
        return [name, *(f"{us[g] / 1000:.3f}" if us[g] else "-" for g in GROUPS), f"{s / 1000:.3f}",
                f"{100 * s / total:.1f}%"]  # fmt: skip

    rows = [cells(b.block, b.group_us) for b in prof.by_block()]
    return header, [*rows, cells("total", prof.by_group())]


def time_summary_lines(prof: TimeProfile) -> list[str]:
    total = prof.node_us or 1.0
    shares = "  ".join(f"{g} {100 * t / total:.1f}%" for g, t in prof.by_group().items())
    return [f"measured in ONNX Runtime: {prof.model}, {prof.threads} thread(s), median of {prof.runs} runs: "
            f"run {prof.run_us / 1000:.3f} ms, nodes {prof.node_us / 1000:.3f} ms",
            f"time by group: {shares}", *(f"warning: {w}" for w in prof.warnings)]  # fmt: skip


def format_time_profile(prof: TimeProfile) -> str:
    """The measured block table as plain text (the CLI renders the same rows with rich)."""
    header, rows = time_rows(prof)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + time_summary_lines(prof))
