"""What ToMe should compare tokens by, and which merge schedule, on all-MiniLM-L6-v2 at sequence 128: fidelity
without training, in PyTorch (no latency; the ONNX Runtime measurement is ``tome_seq128.py``).

Every probe runs the reducing encoder of ``deepslim.compress.tokens`` with its layer step replaced by one that
hands the merge another similarity metric (the layer's keys, queries, values, attention output ``h``, input ``x``,
the keys of every head side by side, ...); the merge itself (``bipartite_merge``, size-weighted, proportional
attention) is the library's. Fidelity: cosine to the dense model's embeddings on the 72 built-in passages
(``passages128``, the benchmark's set, ~99 real tokens padded to 128), 32 full-length texts of exactly 128 real
tokens, and 128 held-out runs of stdlib docstring sentences (``docstrings128``: the set the metric and schedule
were chosen on, so that the built-in passages stay a test set). ``cost`` is the model's matrix-product work at a
full-length input relative to dense (QKV and output projections at the layer's input count, the FFN at its
output, attention and the similarity product included): a guide to the speed, not a measurement.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/tome_metric_probe.py [--json benchmarks/results/
        transformer_encoder_session11_tome_probe.json] [--greedy 8 [--greedy-cost 2.1]]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import deepslim as ds
import deepslim.compress.tokens.encoders as enc
from _common import result_header, write_json_atomic
from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
from deepslim.compress.tokens._reduce import bipartite_merge, merge_metric, size_bias, unaffine
from deepslim.models.hf import tokenize
from deepslim.tasks.similarity import embedding_fidelity
from token_thresholds import full_length_texts
from transformer_encoder import docstring_sentences, passages

Metric = Callable[[dict[str, Any]], torch.Tensor]


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).flatten(2)  # (B, H, T, D) -> (B, T, H·D)


METRICS: dict[str, Metric] = {
    "keys (mean over heads, ToMe)": lambda v: v["k"].mean(1),
    "queries (mean over heads)": lambda v: v["q"].mean(1),
    "values (all heads)": lambda v: _heads(v["v"]),
    "keys (all heads side by side)": lambda v: _heads(v["k"]),
    "attention output h": lambda v: v["h"],
    "layer input x": lambda v: v["x"],
    "h without the norm's scale/shift": lambda v: unaffine(v["h"], v["layer"].attention.output.LayerNorm),
    "keys_states (library)": lambda v: merge_metric("keys_states", v["k"], unaffine(
        v["h"], v["layer"].attention.output.LayerNorm)),  # fmt: skip
}
SCHEDULES = [(16,) * 6, (18,) * 6, (24, 20, 16, 12, 8, 4), (20, 20, 16, 16, 12, 12), (20, 20, 20, 20, 0, 0),
             (24, 24, 24, 0, 0, 0), (32, 32, 0, 0, 0, 0), (32, 0, 0, 0, 0, 0), (0, 32, 0, 0, 0, 0),
             (0, 0, 32, 0, 0, 0), (0, 0, 0, 32, 0, 0), (0, 0, 0, 0, 32, 0), (0, 0, 0, 0, 0, 32)]  # fmt: skip


def probing_layer(metric: Metric) -> Callable[..., Any]:
    """``BertTokenReduction._layer`` with the merge comparing tokens by ``metric(locals)`` (merging only)."""

    def layer_step(layer: Any, plan: Any, x: torch.Tensor, size: torch.Tensor, soft: Any = None, pool: bool = False,
                   members: Any = None) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # fmt: skip
        sa = layer.attention.self
        shape = (*x.shape[:-1], -1, sa.attention_head_size)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (sa.query, sa.key, sa.value))
        probs = F.softmax(torch.matmul(q, k.transpose(2, 3)) * sa.scaling + size_bias(size, x.dtype), dim=-1)
        h = layer.attention.output(torch.matmul(probs, v).transpose(1, 2).flatten(2), x)
        if plan.r > 0:
            h, size = bipartite_merge(h, size, metric({"q": q, "k": k, "v": v, "h": h, "x": x, "layer": layer}),
                                      plan.r)  # fmt: skip
        return layer.output(layer.intermediate(h), h), size, None, None

    return layer_step


def cost(rs: tuple[int, ...], seq: int = 128, c: int = 384, sim: int = 768) -> float:
    """Dense work over the reduced model's (multiply-adds): per layer the projections at its input, attention, the
    FFN at its output, and for a merging layer the A×B similarity product and the merge's product."""
    dense = len(rs) * (12 * c * c * seq + 2 * seq * seq * c)
    reduced, t = 0.0, seq
    for r in rs:
        out = t - min(r, (t - 1) // 2)
        reduced += 4 * c * c * t + 2 * t * t * c + 8 * c * c * out + (t * t * sim / 4 + out * t * c if r else 0)
        t = out
    return dense / reduced


def docstring_texts(teacher: torch.nn.Module, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` runs of 12 stdlib docstring sentences (the last ones of the list: held out of every distillation) cut
    to exactly 128 real tokens: the greedy search's selection set (no padding to merge for free)."""
    docs = docstring_sentences()
    texts = [" ".join(docs[i : i + 12]) for i in range(len(docs) - 12 * n, len(docs), 12)]
    ids, mask = tokenize(teacher, texts, seq_len=128)
    full = mask.all(1)
    return ids[full][:n], mask[full][:n]


@torch.no_grad()
def greedy(args: argparse.Namespace) -> dict[str, Any]:
    """A merge schedule grown greedily (keys_states): from ``r = 8`` in every layer, add ``--greedy`` tokens to the
    layer that loses the least mean cosine (on :func:`docstring_texts`) per unit of :func:`cost` gained, until the
    cost reaches ``--greedy-cost``. Where the schedule's shape matters, the path shows it."""
    torch.set_num_threads(1)
    result = result_header("tome_metric_probe_greedy", 1) | {"load_before": os.getloadavg(), "step": args.greedy}
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    ids, mask = docstring_texts(teacher)

    def embed(model: torch.nn.Module) -> torch.Tensor:
        return torch.cat([model(ids[i : i + 32], mask[i : i + 32]) for i in range(0, len(ids), 32)])

    ref, seen = embed(teacher), {}

    def fid(rs: tuple[int, ...]) -> float:
        if rs not in seen:
            model = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=rs, metric="keys_states"))
            seen[rs] = embedding_fidelity(embed(model), ref)["cosine_mean"]
        return seen[rs]

    rs, path = (8,) * 6, []
    while cost(rs) < args.greedy_cost:
        here_cost, here = cost(rs), fid(rs)
        steps = [tuple(r + args.greedy * (j == i) for j, r in enumerate(rs)) for i in range(6)]
        rs = min(steps, key=lambda c: max(here - fid(c), 1e-6) / (cost(c) - here_cost))
        path.append({"r": list(rs), "cost": round(cost(rs), 3), "docstrings_full128": round(fid(rs), 4)})
        print(path[-1], flush=True)
    result |= {"path": path, "load_after": os.getloadavg()}
    return result


@torch.no_grad()
def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    result = result_header("tome_metric_probe", 1)
    result["load_before"] = os.getloadavg()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    test = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0).test.dataset
    full = full_length_texts(teacher)
    val_ids, val_mask = passages(teacher, docstring_sentences(), seed=5)
    sets = {"docstrings128": (val_ids[-128:], val_mask[-128:]), "passages128": (test.ids, test.mask),
            "full_length128": (full, torch.ones_like(full))}  # fmt: skip

    def embed(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(ids[i : i + 32], mask[i : i + 32]) for i in range(0, len(ids), 32)])

    refs = {k: embed(teacher, *v) for k, v in sets.items()}

    def fidelity(model: torch.nn.Module) -> dict[str, dict[str, float]]:
        return {k: {m: round(x, 4) for m, x in embedding_fidelity(embed(model, *v), refs[k]).items()}
                for k, v in sets.items()}  # fmt: skip

    original = enc.BertTokenReduction.__dict__["_layer"]  # the staticmethod itself, not the function it wraps
    try:
        result["metrics_r16"] = {}
        for name, metric in METRICS.items():
            enc.BertTokenReduction._layer = staticmethod(probing_layer(metric))
            result["metrics_r16"][name] = fidelity(merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=16)))
    finally:
        enc.BertTokenReduction._layer = original
    result["schedules_keys_states"] = [
        {"r": list(rs), "cost": round(cost(rs), 3), **fidelity(merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(
            r=rs, metric="keys_states")))} for rs in SCHEDULES]  # fmt: skip
    result["load_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/transformer_encoder_session11_tome_probe.json")
    parser.add_argument("--greedy", type=int, default=0, help="grow a schedule greedily by this many tokens a step")
    parser.add_argument("--greedy-cost", type=float, default=2.1, help="... until its cost reaches this")
    args = parser.parse_args()
    if args.greedy:
        write_json_atomic(greedy(args), args.json)
        return
    result = run(args)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for name, f in result["metrics_r16"].items():
        cells = [f"{k} {v['cosine_mean']:.4f}/{v['cosine_min']:.4f}" for k, v in f.items()]
        print(f"r=16 {name:36s} " + "  ".join(cells))
    for row in result["schedules_keys_states"]:
        print(f"{str(tuple(row['r'])):26s} cost {row['cost']:.2f}x  " + "  ".join(
            f"{k} {row[k]['cosine_mean']:.4f}/{row[k]['cosine_min']:.4f}" for k in ("docstrings128", "passages128",
                                                                                  "full_length128")))  # fmt: skip
    print("load before/after:", result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
