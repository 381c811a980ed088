"""What the node table's error on MobileNetV2 0.5 at 28² follows (issue 14, session 11): session 7's 50 spread
policies (benchmarks/results/search_session7_table_mobilenet_v2.json, nothing is timed here) measured/raw-node-sum
ratio runs from 0.76 (small policies) to 1.60 (large, mostly float ones). Each node was timed alone, its weights warm
in the cache; a whole model whose weights do not fit the core's L2 streams them from further away on every run.
This rebuilds each policy's model (pruning only: weights counted, nothing run) and asks whether the bytes of its
weights as the runtime stores them (float32: 4 per weight, int8 layers: 1) explain the ratio, and how far a line in
the node sum and those bytes gets towards the ±10 % target (random splits, as benchmarks/_search_table10.py)::

    python benchmarks/_search_table11.py benchmarks/results/search_session7_table_mobilenet_v2.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_table10 import errors, features, held_out  # noqa: E402
from deepslim.search import SearchSpace  # noqa: E402
from deepslim.search.space import Policy, prune_policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402

L2_BYTES = 2 * 2**20  # lscpu here: L2 4 MiB in 2 instances, one per core


def weight_bytes(net: nn.Module, int8: dict[str, bool]) -> float:
    """The bytes of ``net``'s convolution and linear weights as ONNX Runtime holds them: 1 per weight of an int8
    layer, 4 of a float one (biases, folded batch norms: 4 per output channel)."""
    total = 0.0
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            per = 1 if int8.get(name, False) else 4
            total += m.weight.numel() * per + m.weight.shape[0] * 4
    return total


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    lt = doc["models"]["mobilenet_v2"]["latency_table"]
    scale, rows = lt["calibration"]["node_scale"], lt["rows"]
    dense = PRETRAINED_ARCH["mobilenet_v2"]()
    dense.load_state_dict(torch.load(doc["settings"]["pretrained"], weights_only=True))
    x = torch.zeros(1, 1, 28, 28)
    space = SearchSpace.from_model(dense, x, round_to=doc["settings"]["round_to"], kinds=("prune", "int8"))
    feats: list[dict[str, Any]] = []
    for r in rows:
        policy = Policy.from_dict(r["policy"])
        net = prune_policy(dense, space, policy, example_input=x)
        f = features(r, scale)
        f["weight_mb"] = weight_bytes(net, policy.int8) / 2**20
        f["over_l2_mb"] = max(0.0, f["weight_mb"] - L2_BYTES / 2**20)
        feats.append(f)
    y = np.array([r["measured_ms"] for r in rows])
    raw = np.array([f["raw_ms"] for f in feats])
    ratio = y / raw
    out: dict[str, Any] = {"source": sys.argv[1], "policies": len(rows), "dense_weight_mb":
                           weight_bytes(dense, {}) / 2**20, "plain_sums": errors(raw, y), "fits": {},
                           "correlation_with_ratio": {k: float(np.corrcoef(ratio, [f[k] for f in feats])[0, 1])
                                                      for k in ("weight_mb", "macs_m", "int8_layers", "changes")},
                           "rows": [{"measured_ms": float(m), "raw_ms": f["raw_ms"], "ratio": float(m / f["raw_ms"]),
                                     "weight_mb": f["weight_mb"], "int8_layers": f["int8_layers"]}
                                    for m, f in zip(y, feats, strict=True)]}  # fmt: skip
    sets = {"raw": ["raw_ms"], "raw+weight_mb": ["raw_ms", "weight_mb"], "raw+over_l2_mb": ["raw_ms", "over_l2_mb"],
            "raw+weight_mb+changes": ["raw_ms", "weight_mb", "changes"],
            "raw+int8+changes": ["raw_ms", "int8_layers", "changes"]}  # fmt: skip
    for name, cols in sets.items():
        a = np.array([[f[c] for c in cols] for f in feats])
        out["fits"][name] = {f"fit_on_{n}": held_out(a, y, n) for n in (10, 25)}
        design = np.column_stack([a, np.ones(len(y))])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        out["fits"][name]["all_50_in_sample"] = errors(design @ coef, y)
        out["fits"][name]["coefficients"] = dict(zip([*cols, "intercept_ms"], map(float, coef), strict=True))
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
