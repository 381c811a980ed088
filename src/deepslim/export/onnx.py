"""Exporting to ONNX, with a parity check of ONNX Runtime's output against PyTorch's."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim._modes import inference_mode
from deepslim.errors import ExportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size_bytes: int
    max_abs_error: float  # ONNX Runtime vs PyTorch on the example input
    top1_agreement: float  # fraction of rows whose argmax agrees (classification outputs)
    format: str = "fp32"  # "fp32", or "qdq-int8" for a linearly quantized model
    float_layers: tuple[str, ...] = ()  # quantized layers the integer graph could not run on integer kernels
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "max_abs_error": self.max_abs_error,
                "top1_agreement": self.top1_agreement, "format": self.format, "float_layers": list(self.float_layers),
                "warnings": list(self.warnings)}  # fmt: skip


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, example_input: torch.Tensor, opset: int = 18,
                calib_data: Iterable[Any] | None = None) -> ExportResult:  # fmt: skip
    """Write ``model`` as ONNX (atomically) and check that ONNX Runtime reproduces PyTorch's output on the input.

    A model quantized with ``LinearQuantConfig`` (8-bit activations) is written as an integer QDQ graph
    (u8 activations, s8 per-channel weights: ONNX Runtime's fast kernels). ``calib_data`` lets the export also
    quantize residual additions, which the integer kernels need between quantized layers (see
    :mod:`deepslim.export.qdq`); without it they stay in float and the result says so.
    """
    from deepslim.export.qdq import float_copy, quantized_layers, write_qdq

    dest = Path(path)
    layers = quantized_layers(model)
    bad = [n for n, lq in layers.items() if lq.act_bits not in (None, 8)]
    if bad:
        raise ExportError(f"integer export takes 8-bit activations; {bad[0]} has {layers[bad[0]].act_bits}-bit "
                          "(ONNX Runtime's integer kernels are 8-bit)")  # fmt: skip
    float_layers: list[str] = []
    warns: list[str] = []
    with inference_mode(model):
        with atomic_path(dest) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if layers:
                with tempfile.TemporaryDirectory() as work:
                    fp32 = Path(work) / "float.onnx"
                    _export(_decoded_weights(float_copy(model)), example_input, fp32, opset)
                    cal = _calibration_of(model)
                    float_layers = write_qdq(fp32, tmp, layers, calib_data, cal)
            else:
                _export(_decoded_weights(model), example_input, tmp, opset)
        with torch.no_grad():
            expected = model(example_input).float().numpy()
    if layers and calib_data is None:
        warns.append("no calib_data: residual additions stay in float, so the layers feeding them cannot run as "
                     "integer kernels (pass calib_data / --data)")  # fmt: skip
    got = run_onnx(dest, example_input.numpy())
    err = float(abs(got - expected).max()) if got.size else 0.0
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean()) if got.ndim >= 2 else 1.0
    return ExportResult(dest, dest.stat().st_size, err, agree, "qdq-int8" if layers else "fp32",
                        tuple(float_layers), tuple(warns))  # fmt: skip


def _calibration_of(model: nn.Module) -> Any:
    from deepslim.compress.quantize.observers import Calibration

    return getattr(model, "deepslim_calibration", Calibration.MINMAX)


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
            values = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
            m.__class__ = m.__class__.__bases__[0]
            del m._modules["parametrizations"]
            for name, value in values.items():
                m._parameters[name] = nn.Parameter(value, requires_grad=False)
    return baked


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    errors = []
    # the exporter warns about torchvision operators it cannot register; deepslim uses none
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for dynamo in (True, False):  # the torch.export-based exporter first, then the TorchScript one
        extra = {"external_data": False} if dynamo else {}  # one self-contained file: its size is the model's
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=dynamo, opset_version=opset, verbose=False,
                              input_names=["input"], output_names=["output"], **extra)  # fmt: skip
            return
        except Exception as exc:  # both exporters raise many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {str(exc).strip().splitlines()[0]}")
            log.debug("ONNX export (dynamo=%s) failed", dynamo, exc_info=True)
    raise ExportError(f"ONNX export failed: {'; '.join(errors)}")


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


def run_onnx(path: str | os.PathLike[str], x: Any, threads: int | None = None) -> Any:
    sess = ort_session(path, threads=threads)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
