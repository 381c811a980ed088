"""How good a latency table is: random policies of a search space measured end to end beside the table's predictions
(:func:`check_table`), reported as relative error (p50, p90, share within ±10 %) and Kendall's rank correlation —
the table's, the node table's and the MAC count's (the proxy other tools optimise), so that a table that ranks
policies no better than MACs shows it (:class:`TableCheck`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from deepslim.errors import ConfigError

if TYPE_CHECKING:
    from deepslim.search.latency import LatencyTable


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's rank correlation (tau-a: ties count as neither concordant nor discordant)."""
    n = len(a)
    if n < 2 or len(b) != n:
        return float("nan")
    score = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            score += float(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return score / (n * (n - 1) / 2)


@dataclass(frozen=True)
class TableCheck:
    """Predicted vs measured end-to-end latency over some policies: relative error (p50, p90, share within ±10%)
    and Kendall's tau of the table and of the MAC count against the measurements."""

    rows: tuple[dict[str, Any], ...]  # {"predicted_ms", "measured_ms", "macs", optional "node_/layer_predicted_ms"}

    @property
    def errors(self) -> list[float]:
        return [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        meas = [r["measured_ms"] for r in self.rows]
        macs = [float(r["macs"]) for r in self.rows]
        layers = _accuracy([r["predicted_ms"] for r in self.rows], meas)
        mac_tau = kendall_tau(macs, meas) if len(meas) >= 2 else None
        doc: dict[str, Any] = {"points": len(self.rows), **layers, "mac_proxy_kendall_tau": mac_tau}
        for name in ("layer", "node"):  # each table's own accuracy, where it predicted every row
            if self.rows and all(f"{name}_predicted_ms" in r for r in self.rows):
                doc[f"{name}_table"] = _accuracy([r[f"{name}_predicted_ms"] for r in self.rows], meas)
        return {**doc, "rows": list(self.rows)}


def _accuracy(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float | None]:
    """Relative error (p50, p90, share within ±10%) and Kendall's tau of predictions against measurements."""
    errs = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    if not errs:
        return {"error_p50": None, "error_p90": None, "within_10pct": None, "kendall_tau": None}
    return {"error_p50": float(np.percentile(errs, 50)), "error_p90": float(np.percentile(errs, 90)),
            "within_10pct": float(np.mean([e <= 0.10 for e in errs])),
            "kendall_tau": kendall_tau(pred, meas) if len(errs) >= 2 else None}  # fmt: skip


def check_table(model: nn.Module, space: Any, table: LatencyTable, *, example_input: Any, calib_data: Any,
                policies: int = 50, seed: int = 0, nodes: Any = None, spread: bool = False) -> TableCheck:  # fmt: skip
    """Measure ``policies`` random policies of ``space`` end to end (interleaved) beside the table's predictions
    (and, with ``nodes``, a :class:`~deepslim.search.node_table.NodeTable`, beside the node-level ones).
    ``spread``: policies drawn at levels evenly spread from the fewest channels to all
    (:meth:`~deepslim.search.space.SearchSpace.sample_at`), so they span the space's latencies."""
    import random

    from deepslim.analysis import profile
    from deepslim.search.space import prune_policy, quantize_policy

    if not table.end_to_end:
        raise ConfigError("this latency table has no end-to-end timer to check it against")
    rng = random.Random(seed)
    rows, pairs = [], []
    for i in range(policies):
        policy = space.sample_at(rng, i / max(policies - 1, 1)) if spread else space.sample(rng)
        net = prune_policy(model, space, policy, example_input=example_input, calib_data=calib_data)
        predicted = table.predict(net, example_input, policy.int8)
        macs = profile(net, example_input).macs
        pairs.append((quantize_policy(net, space, policy, calib_data=calib_data), example_input))
        rows.append({"policy": policy.to_dict(), "predicted_ms": predicted, "macs": macs})
    measured = table.measure(pairs) or []
    if nodes is not None:  # after the measurement: the node sums read the files it exported
        for row, (quantized, _) in zip(rows, pairs, strict=True):
            raw = nodes.raw_model(quantized, example_input)  # with a weight term, the model's weight bytes too
            weighted = getattr(nodes, "weight_coef", 0.0)
            row["node_predicted_ms"] = nodes.predict_model(raw, quantized) if weighted else nodes.predict(raw)
    return TableCheck(tuple({**r, "measured_ms": m} for r, m in zip(rows, measured, strict=True) if m == m))
