"""Where a transformer's time goes: measured per-node times mapped back to blocks and to attention / FFN.

ONNX Runtime's profiler times every node it runs, but it names nodes of the graph it *executed*: after its fusions
(``Attention``, ``SkipLayerNormalization``, ``BiasGelu``, ``FusedMatMul``) and quantization rewrites, many names are
new. Each executed node is traced back to the PyTorch module that produced it:

1. its own scope: the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, or a TorchScript-style name
   (``/encoder/layer.0/attention/self/query/MatMul`` is module ``encoder.layer.0.attention.self.query``);
2. else the scope of the exported graph's node of the same name, or of the node that produced the same output
   tensor (fusions keep their last output's name), or the scope written in that tensor's name;
3. else (operators written outside any module, e.g. token merging's own arithmetic, or nodes the runtime inserted)
   by position: before the first block they are embeddings, after the last block other (the head), and in between
   they follow the dataflow: the latest block among their inputs' producers, with the group of their first input
   when it comes from that block, else other. So attention's softmax goes with the attention projections it reads,
   a residual addition (its first input is the previous block's stream) is other, and token merging splits into
   attention (the key similarities and their sort, which read the keys) and other (the gathers of the stream).

A *block* is the module path up to its first numeric component (``blocks.3``, ``encoder.layer.3``); within a block
the group comes from the names below it: ``attn``/``attention``/``qkv``/``query``/..., the pre-norm ``ln1``/``norm1``
-> attention; ``mlp``/``ffn``/``intermediate``/``output``/``fc1``/``fc2``, the pre-norm ``ln2``/``norm2`` -> FFN; the
residual additions and anything else -> other. Outside blocks, modules named ``*embed*`` are embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GROUPS = ("embeddings", "attention", "ffn", "other")
OUTSIDE = "(outside blocks)"
_ATTENTION_PARTS = {"ln1", "ln_1", "norm1", "layernorm_before", "self", "query", "key", "value", "qkv", "q_proj",
                    "k_proj", "v_proj", "out_proj"}  # fmt: skip
_FFN_PARTS = {"output", "ln2", "ln_2", "norm2", "layernorm_after", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h"}
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NodeLabel:
    """Where one executed node belongs: its module path ('' when unknown), block ('' outside blocks) and group."""

    module: str
    block: str
    group: str


def _path_from_name(name: str) -> str:
    """'/encoder/layer.0/attention/self/query/MatMul' -> 'encoder.layer.0.attention.self.query'; '' otherwise."""
    if not name.startswith("/"):
        return ""
    parts: list[str] = []
    for p in filter(None, name.split("/")[1:-1]):
        if parts and p.startswith(parts[-1] + "."):  # a Sequential's child: '/blocks/blocks.0/' is 'blocks.0'
            parts[-1] = p
        else:
            parts.append(p)
    return ".".join(parts)


def _path_from_scopes(value: str) -> str:
    """The deepest module of the dynamo exporter's scope list ``['', 'blocks', 'blocks.0', ..., 'op_name']``."""
    try:
        import ast

        scopes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return ""
    modules = [s for s in scopes[:-1] if isinstance(s, str)] if isinstance(scopes, list) else []
    deepest = modules[-1] if modules else ""
    return "" if deepest.startswith("_") else deepest


def node_path(node: Any) -> str:
    """A node's own module path: from the dynamo exporter's metadata or a TorchScript-style name ('' if none)."""
    for prop in getattr(node, "metadata_props", ()):
        if prop.key == _SCOPES_KEY:
            path = _path_from_scopes(prop.value)
            if path:
                return path
    return _path_from_name(node.name)


def classify(path: str) -> tuple[str, str]:
    """(block, group) of a module path; block '' when it lies outside every block."""
    parts = path.split(".") if path else []
    at = next((i for i, p in enumerate(parts) if i > 0 and p.isdigit()), None)
    if at is None:
        return "", "embeddings" if any("embed" in p.lower() for p in parts) else "other"
    block, inner = ".".join(parts[: at + 1]), [p.lower() for p in parts[at + 1 :]]
    if any("attn" in p or "attention" in p or p in _ATTENTION_PARTS for p in inner):
        return block, "attention"
    if any("mlp" in p or "ffn" in p or "feed_forward" in p or "intermediate" in p or p in _FFN_PARTS for p in inner):
        return block, "ffn"
    return block, "other"


def _original_paths(original: Any | None) -> tuple[dict[str, str], dict[str, str]]:
    """Module paths of the exported graph's nodes, by node name and by output tensor name."""
    by_name: dict[str, str] = {}
    by_tensor: dict[str, str] = {}
    for node in getattr(original, "node", ()):
        path = node_path(node)
        if path:
            by_name[node.name] = path
            by_tensor.update({o: path for o in node.output if o})
    return by_name, by_tensor


def _scoped_path(node: Any, by_name: Mapping[str, str], by_tensor: Mapping[str, str]) -> str:
    """Rules 1 and 2 of the module docstring: the node's module path, or '' when nothing names one."""
    path = node_path(node) or by_name.get(node.name, "")
    outputs = [o for o in node.output if o]
    for rule in (lambda o: by_tensor.get(o, ""), _path_from_name):
        path = path or next((p for p in map(rule, outputs) if p), "")
    return path


def label_nodes(executed: Any, original: Any | None = None) -> dict[str, NodeLabel]:
    """Labels of every node of ``executed`` (an ``onnx.GraphProto`` in topological order, e.g. the graph ONNX
    Runtime ran after its optimizations), traced back through ``original`` (the exported graph), by node name."""
    by_name, by_tensor = _original_paths(original)
    nodes = list(executed.node)
    paths = [_scoped_path(n, by_name, by_tensor) for n in nodes]
    found = [classify(p) if p else None for p in paths]
    in_block = [(i, f[0]) for i, f in enumerate(found) if f is not None and f[0]]
    first, last = (in_block[0][0], in_block[-1][0]) if in_block else (len(nodes), -1)
    labels: dict[str, NodeLabel] = {}
    producer: dict[str, NodeLabel] = {}
    recent = in_block[0][1] if in_block else ""  # the block of the last block node seen
    for i, (node, path, f) in enumerate(zip(nodes, paths, found, strict=True)):
        if f is not None:
            label = NodeLabel(path, *f)
        elif i < first:
            label = NodeLabel("", "", "embeddings")
        elif i > last:
            label = NodeLabel("", "", "other")
        else:
            label = _inherit([producer[t] for t in node.input if t in producer], recent)
        recent = label.block or recent
        labels[node.name or f"{node.op_type}_{i}"] = label
        producer.update({o: label for o in node.output if o})
    return labels


def _inherit(inputs: list[NodeLabel], recent: str) -> NodeLabel:
    """The label of an unscoped node between blocks, from its inputs' producers: the latest block among them, and
    the group of its first input when that input comes from the same block (else other: a residual addition reads
    the previous block's stream). With no block among its inputs, the block of the last block node seen, other."""
    blocks = [i.block for i in inputs if i.block]
    if not blocks:
        return NodeLabel("", recent, "other")
    block = max(blocks, key=block_key)
    return NodeLabel("", block, inputs[0].group if inputs[0].block == block else "other")


def node_times(events: Iterable[Mapping[str, Any]], *, skip: int = 0) -> list[tuple[str, str, float]]:
    """(node name, operator, median time in µs) of each node in ONNX Runtime's profile ``events``, in the order the
    nodes first ran; the first ``skip`` runs of every node (warm-up) are left out."""
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        durations.setdefault(node, []).append(float(e["dur"]))
        ops[node] = str(e.get("args", {}).get("op_name", ""))
    out = []
    for node, times in durations.items():
        kept = sorted(times[skip:] or times)
        mid = len(kept) // 2
        out.append((node, ops[node], kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2))
    return out


def run_times(events: Iterable[Mapping[str, Any]], *, skip: int = 0) -> list[float]:
    """Whole-run times in µs (ORT's ``model_run`` events) after the first ``skip`` runs."""
    runs = [float(e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return runs[skip:] or runs


_NUMERIC = re.compile(r"\d+")


def block_key(block: str) -> tuple[Any, ...]:
    """Sort key: the outside row first, then blocks in numeric order (``blocks.10`` after ``blocks.9``)."""
    if not block or block == OUTSIDE:
        return (0,)
    return (1, *[(0, int(p), "") if p.isdigit() else (1, 0, p) for p in block.split(".")])


@dataclass(frozen=True)
class NodeTime:
    """One executed node: its median time and where it belongs."""

    name: str
    op_type: str
    time_us: float
    module: str
    block: str
    group: str


@dataclass(frozen=True)
class BlockTime:
    """Measured time of one block (or of the nodes outside blocks), split by group."""

    block: str
    group_us: dict[str, float]

    @property
    def total_us(self) -> float:
        return sum(self.group_us.values())


@dataclass(frozen=True)
class TimeProfile:
    """Measured per-node times of an ONNX file in ONNX Runtime, with the block / group view.

    ``run_us`` is the median whole run as ORT times it; ``node_us`` (the nodes' medians summed) is a little less:
    the difference is the executor's own work between nodes.
    """

    model: str
    nodes: tuple[NodeTime, ...]
    run_us: float
    runs: int
    threads: int
    warnings: tuple[str, ...] = ()

    @property
    def node_us(self) -> float:
        return sum(n.time_us for n in self.nodes)

    def by_group(self) -> dict[str, float]:
        """Time (µs) of each group over the whole model: embeddings, attention, ffn, other."""
        out = dict.fromkeys(GROUPS, 0.0)
        for n in self.nodes:
            out[n.group] += n.time_us
        return out

    def by_block(self) -> list[BlockTime]:
        """One row per block in order (the nodes outside blocks first), each split by group."""
        rows: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            row = rows.setdefault(n.block or OUTSIDE, dict.fromkeys(GROUPS, 0.0))
            row[n.group] += n.time_us
        return [BlockTime(b, rows[b]) for b in sorted(rows, key=block_key)]

    def to_dict(self) -> dict[str, Any]:
        total = self.node_us or 1.0
        return {"model": self.model, "runs": self.runs, "threads": self.threads, "run_us": self.run_us,
                "node_us": self.node_us,
                "groups": {g: {"us": t, "share": t / total} for g, t in self.by_group().items()},
                "blocks": [{"block": b.block, **b.group_us, "total": b.total_us} for b in self.by_block()],
                "nodes": [vars(n) for n in self.nodes], "warnings": list(self.warnings)}  # fmt: skip

    def __str__(self) -> str:
        from deepslim.analysis._format import format_time_profile

        return format_time_profile(self)


def time_profile(model: str, times: list[tuple[str, str, float]], labels: Mapping[str, NodeLabel], *,
                 run_us: float, runs: int, threads: int) -> TimeProfile:  # fmt: skip
    """Join measured node times with their labels; a timed node the executed graph does not name (ORT renames a
    few it inserts) takes the label of the node that ran just before it."""
    nodes, unnamed = [], []
    last = NodeLabel("", "", "embeddings")
    for name, op, us in times:
        label = labels.get(name)
        if label is None:
            unnamed.append(name)
            label = last
        nodes.append(NodeTime(name, op, us, label.module, label.block, label.group))
        last = label
    warnings = (f"{len(unnamed)} timed nodes not in the executed graph, labelled as the node before them: "
                f"{', '.join(unnamed[:5])}{' ...' if len(unnamed) > 5 else ''}",) if unnamed else ()  # fmt: skip
    return TimeProfile(model, tuple(nodes), run_us, runs, threads, warnings)
