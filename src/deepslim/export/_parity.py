"""A written file checked against PyTorch: ONNX Runtime sessions, the parity check that fails an export whose file
disagrees with the model (naming the layer that disagrees most), and the count of quantized layers that ONNX Runtime
really runs on integer kernels. :func:`~deepslim.export.export_onnx` and the dynamic int8 export
(:mod:`deepslim.export._dynamic_int8`) both end here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim.errors import ExportError

# ONNX Runtime's integer kernels for layers with weights, as they appear in its optimized graph
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
                   "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM", "QLinearConvTranspose"}  # fmt: skip
Inputs = tuple[torch.Tensor, ...]


def _numpy(x: Inputs) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().cpu().numpy() for t in x)


def _check_parity(model: nn.Module, path: Path, inputs: list[Inputs], min_cosine: float,
                  min_agreement: float) -> tuple[float, float, float]:  # fmt: skip
    """(max |error|, cosine, top-1 agreement) of the file against the model; ExportError below the thresholds."""
    with torch.no_grad():
        expected = [model(*x).float().numpy() for x in inputs]
    got = [run_onnx(path, _numpy(x)) for x in inputs]
    err, cos, agree = _agreement(got, expected)
    rows = sum(len(e) for e in expected) if expected[0].ndim >= 2 else 1
    if cos < min_cosine or (rows >= 10 and agree < min_agreement):
        raise ExportError(f"ONNX Runtime's output disagrees with PyTorch's (cosine {cos:.4f}, top-1 agreement "
                          f"{100 * agree:.0f}% over {rows} rows; thresholds min_cosine={min_cosine:g}, "
                          f"min_agreement={min_agreement:g}){_worst_layer(model, path, inputs[0])}; no file written: "
                          "keep the worst layers in float with overrides={name: None}, or report the model")
    return err, cos, agree


def _agreement(got: list[np.ndarray], expected: list[np.ndarray]) -> tuple[float, float, float]:
    """(max |error|, cosine, top-1 agreement) over all checked rows."""
    g = np.concatenate([a.reshape(len(a), -1) if a.ndim >= 2 else a.reshape(1, -1) for a in got]).astype(np.float64)
    e = np.concatenate([a.reshape(len(a), -1) if a.ndim >= 2 else a.reshape(1, -1) for a in expected]).astype(
        np.float64)  # fmt: skip
    if g.shape != e.shape:
        raise ExportError(f"ONNX Runtime's output has shape {g.shape}, PyTorch's {e.shape}")
    if not g.size:
        return 0.0, 1.0, 1.0
    err = float(np.abs(g - e).max())
    denom = float(np.linalg.norm(g) * np.linalg.norm(e))
    cos = float((g * e).sum() / denom) if denom > 0 else float(np.allclose(g, e))
    agree = float((g.argmax(-1) == e.argmax(-1)).mean()) if expected[0].ndim >= 2 else 1.0
    return err, cos, agree


def _worst_layer(model: nn.Module, path: Path, x: Inputs) -> str:
    """'; worst layer NAME (cosine C)': the layer whose output differs most between PyTorch and the file."""
    import onnx

    from deepslim.compress.quantize.linear import QuantMixin

    targets = {n: m for n, m in model.named_modules() if isinstance(m, (QuantMixin, nn.Conv2d, nn.Linear))}
    graph = onnx.load(str(path)).graph
    by_weight = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            base = node.input[1].removesuffix("__dq").removesuffix(".weight")
            if base in targets:
                by_weight[base] = node.output[0]
    if not by_weight:
        return ""
    seen: dict[str, np.ndarray] = {}
    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            seen.setdefault(name, out.detach().float().clone().numpy())  # a copy: an in-place ReLU next overwrites

        return hook

    with hooked({n: targets[n] for n in by_weight}, forward=keep), torch.no_grad():
        model(*x)
    probe = onnx.load(str(path))
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in by_weight.values() if t not in known)
    probe_path = path.with_name(path.name + ".probe.onnx")
    onnx.save(probe, str(probe_path))
    try:
        sess = ort_session(probe_path, threads=1)
        values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, _feeds(sess, _numpy(x))),
                          strict=True))  # fmt: skip
    finally:
        probe_path.unlink(missing_ok=True)
    scores = {n: _agreement([values[t]], [seen[n]])[1] for n, t in by_weight.items()
              if n in seen and values[t].shape == seen[n].shape}  # fmt: skip
    if not scores:
        return ""
    worst = min(scores, key=scores.__getitem__)
    return f"; worst layer {worst} (cosine {scores[worst]:.3f})"


def _integer_layers(path: Path, layers: dict[str, Any], work: Path) -> list[str]:
    """The quantized layers whose weights ONNX Runtime's optimized graph feeds to an integer kernel."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(work / "optimized.onnx")
    opts.log_severity_level = 3  # not the warning that the saved graph is specific to this machine
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(work / "optimized.onnx")).graph
    found = set()
    for node in graph.node:
        if node.op_type in INTEGER_KERNELS:
            for t in node.input:
                base = t.removesuffix("__q")
                if t != base and base.removesuffix(".weight") in layers:
                    found.add(base.removesuffix(".weight"))
    return [n for n in layers if n in found]


def ort_session(path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (all cores if None)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc


def _feeds(sess: Any, xs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The session's inputs by name, in order; ExportError when the counts differ."""
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(xs):
        raise ExportError(f"the ONNX file takes {len(names)} inputs ({', '.join(names)}), got {len(xs)}")
    return dict(zip(names, xs, strict=True))

def run_onnx(path: str | os.PathLike[str], x: Any, threads: int | None = None) -> Any:
    """The file's first output for ``x``: one array, or a tuple of arrays for a model with several inputs."""
    sess = ort_session(path, threads=threads)
    return sess.run(None, _feeds(sess, tuple(x) if isinstance(x, (tuple, list)) else (x,)))[0]
