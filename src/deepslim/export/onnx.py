"""Exporting to ONNX, with a parity check of ONNX Runtime's output against PyTorch's that fails the export when they
disagree, and a count of the layers ONNX Runtime really runs on integer kernels.

Every file has a dynamic batch dimension (servers batch) and records deepslim's version and, when the model carries
it, the input preprocessing (``metadata_props``: ``deepslim.version``, ``deepslim.preprocessing`` as JSON).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim._modes import inference_mode
from deepslim.errors import DeepSlimError, ExportError
from deepslim.export._parity import (  # noqa: F401  (run_onnx, ort_session, INTEGER_KERNELS, _worst_layer: re-exported)
    INTEGER_KERNELS,
    _check_parity,
    _integer_layers,
    _worst_layer,
    ort_session,
    run_onnx,
)

log = logging.getLogger(__name__)
MIN_COSINE = 0.98  # export_onnx's parity threshold (file vs model)
DYNAMIC_MIN_COSINE = 0.995  # ... for a dynamic int8 file (all-MiniLM-L6-v2's files: 0.9968-0.9983)
PREPROCESSING_KEY = "deepslim.preprocessing"
VERSION_KEY = "deepslim.version"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # the exporter's per-node Python stack trace (dropped)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size_bytes: int
    max_abs_error: float  # ONNX Runtime vs PyTorch on the checked inputs
    top1_agreement: float  # fraction of rows whose argmax agrees (classification outputs)
    format: str = "fp32"  # "fp32", or "qdq-int8" for a linearly quantized model
    float_layers: tuple[str, ...] = ()  # quantized layers the integer graph could not run on integer kernels
    warnings: tuple[str, ...] = ()
    cosine: float = 1.0  # cosine similarity of ONNX Runtime's and PyTorch's outputs
    quantized_layers: int = 0  # layers quantized in the model
    integer_layers: int = 0  # of those, layers ONNX Runtime's optimized graph runs on integer kernels
    dynamic_batch: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "max_abs_error": self.max_abs_error,
                "top1_agreement": self.top1_agreement, "cosine": self.cosine, "format": self.format,
                "quantized_layers": self.quantized_layers, "integer_layers": self.integer_layers,
                "float_layers": list(self.float_layers), "dynamic_batch": self.dynamic_batch,
                "warnings": list(self.warnings)}  # fmt: skip


Inputs = tuple[torch.Tensor, ...]


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, example_input: torch.Tensor | Inputs,
                opset: int = 18,
                calib_data: Iterable[Any] | None = None, min_cosine: float | None = None,
                min_agreement: float = 0.8) -> ExportResult:  # fmt: skip
    """Write ``model`` as ONNX (atomically, batch dimension dynamic) and check ONNX Runtime against PyTorch.

    A model quantized with ``LinearQuantConfig`` (8-bit activations) is written as an integer QDQ graph that
    quantizes exactly what the fake-quantized model quantizes (``quantize_`` calibrated every point; no data is
    needed here). A dynamic-int8 transformer encoder (``calibration='dynamic'``, what ``'auto'`` gives a Hugging Face
    BERT-style encoder) is written as ONNX Runtime's fused graph (``Attention``; each ``SkipLayerNormalization``
    rewritten as ``Add`` + ``LayerNormalization``, faster on ONNX Runtime's CPU) with dynamic int8 of exactly its
    quantized layers (format ``"fused-int8"``; see ``deepslim.export._dynamic_int8``).
    The check runs ``example_input`` and, when given, a few batches of ``calib_data`` (tuples, or dicts of the
    model's named inputs); an output cosine below ``min_cosine`` or a top-1 agreement below ``min_agreement`` (over
    10 or more rows of class scores: not asked of a model that outputs embeddings, such as a sentence encoder, nor
    with a loader whose task has no classes) is an ``ExportError`` naming the layer that disagrees most, and no file
    is written. ``min_cosine`` None: 0.98, or 0.995 for a dynamic int8 file, whose PyTorch model computes ONNX
    Runtime's own arithmetic (cosine 0.9968-0.9983 measured on all-MiniLM-L6-v2's files, error 1e-5 on a test BERT),
    so that a drift in that emulation is caught (``deepslim export --min-cosine`` lowers it).

    ``example_input`` is one tensor or a tuple of them (``(input_ids, attention_mask)``): the file then has one input
    per tensor (``input``, ``input_1``, ...), every one with a dynamic batch dimension, and the check feeds them all.
    """
    from deepslim.compress.quantize import scores_are_classes
    from deepslim.export._dynamic_int8 import dynamic_layers, export_dynamic
    from deepslim.export.qdq import float_copy, quantized_layers, requantized_floats, write_qdq

    dest = Path(path)
    if min_cosine is None:
        min_cosine = DYNAMIC_MIN_COSINE if dynamic_layers(model) else MIN_COSINE
    if scores_are_classes(calib_data, None, 1, model) is False:  # embeddings (model or loader): argmax is noise
        min_agreement = 0.0
    if dynamic_layers(model):  # dynamic int8 of a transformer encoder: ONNX Runtime's fused graph
        xs = _as_inputs(example_input)
        with inference_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checks = _check_inputs(xs, calib_data, model=model)
            return export_dynamic(model, dest, xs, checks, opset, min_cosine, min_agreement)
    layers = quantized_layers(model)
    bad = [n for n, lq in layers.items() if lq.act_bits not in (None, 8)]
    if bad:
        raise ExportError(f"integer export takes 8-bit activations; {bad[0]} has {layers[bad[0]].act_bits}-bit "
                          "(ONNX Runtime's integer kernels are 8-bit)")  # fmt: skip
    float_layers: list[str] = []
    warns: list[str] = []
    xs = _as_inputs(example_input)
    inputs = _check_inputs(xs, calib_data, model=model)
    with inference_mode(model), tempfile.TemporaryDirectory() as work, atomic_path(dest) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if layers:
                fp32 = Path(work) / "float.onnx"
                dynamic = _export(_decoded_weights(float_copy(model, keep_points=True)), xs, fp32, opset)
                float_layers = write_qdq(fp32, tmp, layers)
            else:
                dynamic = _export(_decoded_weights(model), xs, tmp, opset)
        _write_metadata(tmp, model)
        err, cos, agree = _check_parity(model, tmp, inputs if dynamic else inputs[:1], min_cosine, min_agreement)
        integer = _integer_layers(tmp, layers, Path(work)) if layers else []
        requantized = requantized_floats(tmp) if layers and _quantizes_float_weights() else []
    if not dynamic:
        warns.append("the model's export needs a fixed batch size: the file takes batches of "
                     f"{xs[0].shape[0]} only")  # fmt: skip
    if layers and len(integer) < len(layers):
        floats = [n for n in layers if n not in integer]
        warns.append(f"{len(layers) - len(integer)} of {len(layers)} quantized layers run in float in ONNX Runtime "
                     f"(e.g. {floats[0]}): their inputs or outputs are not quantized in the graph")  # fmt: skip
    if requantized:
        warns.append(f"{len(requantized)} float layer(s) will run as per-tensor int8 in ONNX Runtime (e.g. "
                     f"{requantized[0]}: it reads a quantized tensor and feeds a quantizer, and ONNX Runtime's "
                     "WeightBiasQuantization quantizes such a layer's float weights); quantize it too for "
                     "per-channel int8, or keep its neighbours in float")  # fmt: skip
    return ExportResult(dest, dest.stat().st_size, err, agree, "qdq-int8" if layers else "fp32", tuple(float_layers),
                        tuple(warns), cos, len(layers), len(integer), dynamic)  # fmt: skip


def _quantizes_float_weights() -> bool:
    """Whether the installed ONNX Runtime quantizes a float Conv/Gemm between quantizers itself (its
    WeightBiasQuantization, in this form since 1.22)."""
    import onnxruntime as ort

    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    return (major, minor) >= (1, 22)


def _as_inputs(x: Any) -> Inputs:
    """``x`` as a tuple of tensors; ExportError for anything else."""
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not xs or not all(isinstance(t, torch.Tensor) for t in xs):
        raise ExportError("example_input must be a tensor or a tuple of tensors (e.g. (input_ids, attention_mask)), "
                          f"got {type(x).__name__}")  # fmt: skip
    if any(t.ndim == 0 for t in xs) and len(xs) > 1:
        raise ExportError("every example input needs a batch dimension; got a 0-d tensor among several inputs")
    return xs


def _check_inputs(xs: Inputs, calib_data: Iterable[Any] | None, batches: int = 4, *,
                  model: nn.Module | None = None) -> list[Inputs]:  # fmt: skip
    """The example and up to ``batches`` calibration batches, each as the model's input tuple.

    A calibration batch is the input itself, or (input, label) for one input, or (inputs..., labels...) whose first
    ``len(xs)`` entries are the inputs for several, or (given ``model``) a dict of the model's named inputs.
    """
    out = [xs]
    for i, batch in enumerate(calib_data or ()):
        if i >= batches:
            break
        if isinstance(batch, Mapping) and model is not None:  # a dict batch: its entries in forward's order
            from deepslim.compress.quantize import batch_inputs

            batch = batch_inputs(model, batch, len(xs))
        if isinstance(batch, (tuple, list)):
            batch = tuple(batch[: len(xs)]) if len(xs) > 1 else (batch[0],)
        else:
            batch = (batch,)
        if len(batch) != len(xs) or not all(isinstance(t, torch.Tensor) for t in batch):
            raise ExportError(f"a calib_data batch must hold the model's {len(xs)} input tensors first")
        out.append(batch)
    return out


def _write_metadata(path: Path, model: nn.Module) -> None:
    """deepslim's version and the model's input preprocessing, in the file's ``metadata_props``; the exporter's
    per-node Python stack traces removed (they hold the source paths of torch and deepslim: the same model gave files
    of different sizes depending on where deepslim was installed, and the paths leaked into shipped files)."""
    import onnx

    from deepslim._version import __version__
    from deepslim.models import PREPROCESSING_ATTR

    proto = onnx.load(str(path))
    props = {VERSION_KEY: __version__}
    pre = getattr(model, PREPROCESSING_ATTR, None)
    if pre is not None:
        props[PREPROCESSING_KEY] = json.dumps(pre, sort_keys=True)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    for graph_nodes in [proto.graph.node, *(f.node for f in proto.functions)]:
        for node in graph_nodes:
            traces = [q for q in node.metadata_props if q.key == STACK_TRACE_KEY]
            for q in traces:
                node.metadata_props.remove(q)
    onnx.save(proto, str(path))


def _decoded_weights(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy whose parametrized weights (masks, codebooks, ±α codes) are plain tensors.

    A runtime needs only the decoded weight; exporting the parametrization would store the original weights *and*
    the mask or indices beside them (a 90%-sparse model's file grew by a quarter that way).
    """
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    import copy

    baked = copy.deepcopy(model)
    for m in baked.modules():
        if parametrize.is_parametrized(m):
            # not remove_parametrizations: it deletes the property from the class the original shares
            plist = m.parametrizations
            assert isinstance(plist, nn.ModuleDict)
            values = {name: getattr(m, name).detach().clone() for name in plist}
            m.__class__ = m.__class__.__bases__[0]
            del m._modules["parametrizations"]
            for name, value in values.items():
                m._parameters[name] = nn.Parameter(value, requires_grad=False)
    return baked


def _qdq_translation() -> dict[Any, Any]:
    """ONNX for deepslim's quantization points: QuantizeLinear → DequantizeLinear with the point's parameters."""
    from onnxscript import opset18 as op

    import deepslim.compress.quantize  # noqa: F401  (registers the operator)

    def qdq(x: Any, scale: Any, zero: Any) -> Any:
        z: Any = op.Cast(zero, to=2)  # uint8 (onnxscript's stubs do not type its TensorType values)
        quantized: Any = op.QuantizeLinear(x, scale, z)
        return op.DequantizeLinear(quantized, scale, z)

    return {torch.ops.deepslim.fake_quant_u8.default: qdq}


def _input_names(n: int) -> list[str]:
    return ["input"] + [f"input_{i}" for i in range(1, n)]


def _dynamic_shapes(model: nn.Module, specs: list[Any]) -> tuple[Any, ...]:
    """``specs`` shaped like ``model.forward``'s signature, as torch.export wants: a ``*args`` parameter takes the
    remaining specs as one tuple."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return tuple(specs)
    out: list[Any] = []
    rest = list(specs)
    for param in params:
        if not rest:
            break
        if param.kind == param.VAR_POSITIONAL:
            out.append(tuple(rest))
            rest = []
        elif param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            out.append(rest.pop(0))
        else:
            break
    return tuple(out + rest)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _export(model: nn.Module, xs: Inputs, path: Path, opset: int) -> bool:
    """Write the ONNX file; True when its batch dimension is dynamic (the default; a fixed one is the fallback).

    Every input's first dimension is the same symbolic batch.
    """
    from deepslim.compress.quantize import exporting

    try:  # an input the model itself refuses (a sequence past its positions) is that one-line error, not an exporter's
        with torch.no_grad():
            model(*xs)
    except DeepSlimError:
        raise
    except Exception:  # noqa: BLE001  (the exporters below say what fails, in their own words)
        log.debug("the model failed on the example input before export", exc_info=True)
    errors = []
    # the exporter warns about torchvision operators it cannot register; deepslim uses none
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # a batch of 1 would be specialised by torch.export: trace with two rows, the batch stays symbolic
    traced = tuple(t if t.ndim == 0 or t.shape[0] > 1 else torch.cat([t, t]) for t in xs)
    in_names = _input_names(len(xs))
    attempts = [(True, True), (True, False), (False, True), (False, False)]  # (dynamo, dynamic batch)
    for dynamo, dynamic in attempts:
        names: dict[str, Any] = {"input_names": in_names, "output_names": ["output"]}
        if dynamo:  # one self-contained file: its size is the model's
            extra: dict[str, Any] = {"external_data": False, "custom_translation_table": _qdq_translation()}
            if dynamic:
                batch = torch.export.Dim("batch")
                extra["dynamic_shapes"] = _dynamic_shapes(model, [{0: batch} if t.ndim else None for t in xs])
        else:
            axes = {n: {0: "batch"} for n, t in zip(in_names, xs, strict=True) if t.ndim}
            extra = {"dynamic_axes": {**axes, "output": {0: "batch"}}} if dynamic else {}
        try:
            with exporting(model, native=not dynamo):
                torch.onnx.export(model, traced if dynamic else xs, str(path), dynamo=dynamo, opset_version=opset,
                                  verbose=False, **names, **extra)  # fmt: skip
            return dynamic
        except Exception as exc:  # both exporters raise many types
            first = _ANSI.sub("", (str(exc).strip().splitlines() or [type(exc).__name__])[0])  # no terminal colours
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {first}")
            log.debug("ONNX export (dynamo=%s, dynamic=%s) failed", dynamo, dynamic, exc_info=True)
    raise ExportError(f"ONNX export failed: {'; '.join(errors[::2])}")



