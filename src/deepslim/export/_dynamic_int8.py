"""``export_onnx`` of a dynamic-int8 model (``Calibration.DYNAMIC``, the default for a Hugging Face BERT-style
encoder): the fast int8 transformer file, through the ordinary verbs.

The file is the one :func:`~deepslim.export._torchscript.export_fused_int8` makes, from the same code: the float
model (the quantized layers back in their float class, their float weights) exported by the TorchScript exporter,
fused by ONNX Runtime's transformer optimizer (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``,
``EmbedLayerNormalization``), the fp32 outlier channels the quantized model chose split off
(:mod:`~deepslim.export._mixed_int8`), then ONNX Runtime's dynamic int8 of exactly the nodes of the layers deepslim
quantized — a fused ``Attention`` when its query, key and value all are; a layer kept float stays float. The
quantized PyTorch model computes the same arithmetic (:mod:`deepslim.compress.quantize._dynamic`), so the usual
parity check compares the file with it, and a file that disagrees is an ``ExportError`` and no file.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim.errors import ExportError
from deepslim.models.hf import attention_heads

if TYPE_CHECKING:
    from deepslim.export.onnx import ExportResult

FORMAT = "fused-int8"


def dynamic_layers(model: nn.Module) -> dict[str, Any]:
    """The model's dynamic int8 layers by name."""
    from deepslim.compress.quantize.linear import QuantMixin

    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin) and m.dynamic}


def heads_width(model: nn.Module) -> tuple[int, int]:
    """(attention heads, hidden width) of the first Hugging Face encoder config in ``model`` — the heads its
    attention modules have now (head pruning leaves the config's count behind); (0, 0) without one."""
    now = attention_heads(model)
    for m in model.modules():
        config = getattr(m, "config", None)
        heads, width = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
        if isinstance(heads, int) and isinstance(width, int) and heads and width:
            return (now[0] if now else heads), width
    return 0, 0


def float_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every quantized layer back in its float class, holding its float weight (ONNX
    Runtime's quantizer rounds it exactly as the dynamic layer does)."""
    from deepslim.compress.quantize.linear import QuantMixin, swap_to_float
    from deepslim.export.onnx import _decoded_weights

    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, QuantMixin):
            swap_to_float(m)
    return _decoded_weights(out).eval()


def _given(layers: dict[str, Any]) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[float]]]:
    """What the quantized layers chose: (fp32 GELU outliers by down projection, fp32 inputs by up projection, input
    scales by up projection)."""
    outliers = {n: m.split_in.tolist() for n, m in layers.items() if m.split_in is not None and m.split_rows}
    inputs = {n: m.split_in.tolist() for n, m in layers.items() if m.split_in is not None and not m.split_rows}
    scales = {n: m.in_scale.tolist() for n, m in layers.items() if m.in_scale is not None}
    return outliers, inputs, scales


def _nodes(model: nn.Module, layers: dict[str, Any], nodes: dict[str, str]) -> list[str]:
    """The fused graph's nodes of the quantized layers: a MatMul per layer, an Attention per query/key/value trio
    (:func:`attention_trios`: all three quantized, or none). A quantized layer with no such node is an ExportError
    naming it."""
    from deepslim.compress.quantize import attention_trios

    trios = {trio[0].rpartition(".")[0]: list(trio) for trio in attention_trios(model)}
    chosen, covered = [], set()
    for name, node in nodes.items():
        if node.endswith("EmbedLayerNormalization") or name not in layers and name not in trios:
            continue
        trio = trios[name] if name not in layers else [name]
        inside = [t for t in trio if t in layers]
        if len(inside) not in (0, len(trio)):
            raise ExportError(f"ONNX Runtime fuses {', '.join(trio)} into one Attention: quantize all three or none "
                              f"({len(inside)} of them are int8)")  # fmt: skip
        if inside:
            chosen.append(node)
            covered.update(inside)
    missing = [n for n in layers if n not in covered]
    if missing:
        raise ExportError(f"{missing[0]} is dynamic int8 but the fused graph has no MatMul or Attention for it "
                          f"({len(missing)} such layers); dynamic int8 runs on ONNX Runtime's MatMul/Attention "
                          "kernels: keep it float with overrides={name: None} or use calibration='minmax'")
    return chosen


def _integer_layers(path: Path, layers: dict[str, Any], nodes: dict[str, str]) -> int:
    """How many quantized layers the file runs on integer kernels (their node became an integer one)."""
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    integer = {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    done = {name for name, node in nodes.items() if ops.get(f"{node}_quant") in integer}
    return sum(1 for n in layers if n in done or n.rsplit(".", 1)[0] in done)


def plain_layer_norms(path: Path) -> int:
    """Rewrite every ``SkipLayerNormalization`` of the ONNX file at ``path`` (in place) as ``Add(input, skip)``, then
    ``Add(bias)``, then the standard ``LayerNormalization``; returns how many. The same sums in the same order, ~3x
    less time: ONNX Runtime's CPU ``SkipLayerNormalization`` (1.32) is a scalar loop with a division per element (7 ns
    per element on this machine, 20-24 % of all-MiniLM-L6-v2's int8 file at every batch and length), the three
    vectorized nodes 1.9-2.5 ns (session 17). The bias is added after the skip so that ONNX Runtime's session
    optimizer, whose ``SkipLayerNormFusion`` needs the normalization's ``Add`` to join two 3-D tensors, does not fuse
    it back (one without a bias it may). A node whose mean or inverse-deviation output is read is left as it is."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 17:
        return 0  # no LayerNormalization before opset 17
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    nodes, done = [], 0
    for n in model.graph.node:
        outs = list(n.output) + [""] * (4 - len(n.output))
        if n.op_type != "SkipLayerNormalization" or read & set(outs[1:3]) - {""}:
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        base = outs[0]  # the new names carry its scope: the profiler's blocks find the layer in them
        total = outs[3] or f"{base}_sum"
        added = f"{base}_skip" if ins[4] else total
        nodes.append(helper.make_node("Add", ins[:2], [added], name=f"{base}_add"))
        if ins[4]:
            nodes.append(helper.make_node("Add", [added, ins[4]], [total], name=f"{base}_bias"))
        nodes.append(helper.make_node("LayerNormalization", [total, ins[2]] + ([ins[3]] if ins[3] else []),
                                      [base], name=f"{base}_norm", axis=-1, epsilon=eps))  # fmt: skip
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return done


def export_dynamic(model: nn.Module, dest: Path, xs: tuple[torch.Tensor, ...], inputs: list[tuple[torch.Tensor, ...]],
                   opset: int, min_cosine: float, min_agreement: float) -> ExportResult:  # fmt: skip
    """Write the fused dynamic-int8 file of ``model`` at ``dest`` and check it against ``model`` on ``inputs``."""
    from deepslim.compress.quantize.linear import QuantMixin
    from deepslim.export import _mixed_int8 as mixed
    from deepslim.export import _parity
    from deepslim.export import _torchscript as ts
    from deepslim.export import onnx as ox

    layers = dynamic_layers(model)
    static = [n for n, m in model.named_modules() if isinstance(m, QuantMixin) and n not in layers]
    if static:
        raise ExportError(f"{static[0]} is static int8 beside dynamic layers: one file is one or the other; quantize "
                          "the model with one calibration")  # fmt: skip
    shape = heads_width(model)
    if not all(shape):
        raise ExportError("dynamic int8 export writes ONNX Runtime's fused transformer graph and needs a Hugging Face "
                          "BERT-style encoder (its config's heads and width); quantize this model with "
                          "calibration='minmax' for a static int8 file")  # fmt: skip
    if opset not in (17, 18):  # 18: export_onnx's default, which the fused file cannot keep
        raise ExportError(f"a dynamic int8 file is ONNX Runtime's fused graph, always written at opset 17; "
                          f"opset={opset} cannot be honoured: pass opset=17 (or leave the default)")  # fmt: skip
    per_channel = {bool(m.per_channel) for m in layers.values()}
    traced = tuple(t if t.ndim == 0 or t.shape[0] > 1 else torch.cat([t, t]) for t in xs)
    given = _given(layers)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(dest) as out:
        work = Path(tmp)
        try:
            fused, _ops, _, split = ts._prepare(float_model(model), traced, ox._input_names(len(xs)), work, shape,
                                                mixed.FusedInt8Config(), [], given)  # fmt: skip
        except ExportError as exc:
            raise ExportError(f"{exc}; dynamic int8 is written as that fused graph: quantize the model with "
                              "calibration='minmax' for a static int8 file") from None  # fmt: skip
        lost = [n for n in (*given[0], *given[1], *given[2]) if n not in split]
        if lost:
            raise ExportError(f"{lost[0]}'s outlier channels have no feed-forward block (MatMul, BiasGelu, MatMul) "
                              "in the fused graph to split or scale; quantize with split_outliers=0, scale_inputs=0"
                              )  # fmt: skip
        nodes = mixed.layer_nodes(fused)
        ts._quantize(fused, out, [], only=_nodes(model, layers, nodes), per_channel=per_channel == {True})
        ox._write_metadata(out, model)
        err, cos, agree = _parity._check_parity(model, out, inputs, min_cosine, min_agreement)
        integer = _integer_layers(out, layers, nodes)
    warns = [] if integer == len(layers) else [f"{len(layers) - integer} of {len(layers)} dynamic int8 layers run "
                                               "in float in ONNX Runtime"]  # fmt: skip
    return ox.ExportResult(dest, dest.stat().st_size, err, agree, FORMAT, (), tuple(warns), cos, len(layers), integer,
                           True)  # fmt: skip
