"""Will it really be faster? Warnings for changes that a runtime cannot turn into speed."""

from __future__ import annotations

from typing import Any

MASK_ONLY_FRACTION = 0.2  # at least this share of zero weights, with dense MACs, is called mask-only sparsity
MEMORY_BOUND_FRACTION = 0.5
TINY_MACS = 5_000_000  # below this, per-call overhead (microseconds) rivals the arithmetic on a CPU


def speed_warnings(prof: Any, device: str = "host") -> list[str]:
    """Warnings about ``prof`` (a :class:`~deepslim.Profile`) on ``device``: mask-only sparsity, memory-bound
    layers, kernels too small to benefit."""
    from deepslim.analysis import estimate_cost

    out = []
    zeros = 1 - prof.nonzero_params / prof.params if prof.params else 0.0
    if zeros >= MASK_ONLY_FRACTION:
        out.append(f"{100 * zeros:.0f}% of the weights are zero but the layers are dense: CPU runtimes compute "
                   "every zero, so sparsity gives no speed-up here (it shrinks the .dsz archive, not the latency)")
    cost = estimate_cost(prof, device)
    if cost.memory_bound_fraction > MEMORY_BOUND_FRACTION:
        out.append(f"{100 * cost.memory_bound_fraction:.0f}% of the estimated time on {device} is in memory-bound "
                   "layers: fewer MACs will not make them faster; fewer bytes moved (smaller activations or "
                   "weights) will")  # fmt: skip
    if prof.macs < TINY_MACS:
        out.append(f"only {prof.macs:,} MACs per call: per-call and per-kernel overhead is a large share of the "
                   "latency, so compression shows little speed-up (batch inputs to see the arithmetic)")  # fmt: skip
    return out
