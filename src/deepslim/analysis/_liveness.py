"""Peak activation memory by liveness: each buffer lives from the step that writes it to the last step that reads it."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class Step:
    reads: set[Hashable] = field(default_factory=set)
    writes: dict[Hashable, int] = field(default_factory=dict)  # buffer -> bytes, for buffers first produced here


def peak_live_bytes(steps: Sequence[Step], inputs: dict[Hashable, int], outputs: Iterable[Hashable]) -> int:
    """Largest total size of buffers alive at once when ``steps`` run in order.

    ``inputs`` are alive before the first step; ``outputs`` stay alive after the last. A buffer written and never
    read still occupies memory during the step that writes it.
    """
    size: dict[Hashable, int] = dict(inputs)
    first: dict[Hashable, int] = dict.fromkeys(inputs, 0)
    last: dict[Hashable, int] = dict.fromkeys(inputs, 0)
    for i, step in enumerate(steps, start=1):
        for key, nbytes in step.writes.items():
            if key not in first:
                first[key], size[key] = i, nbytes
            last[key] = i
        for key in step.reads:
            if key in first:
                last[key] = i
    end = len(steps) + 1
    for key in outputs:
        if key in first:
            last[key] = end
    delta = [0] * (end + 2)
    for key, start in first.items():
        delta[start] += size[key]
        delta[last[key] + 1] -= size[key]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak
