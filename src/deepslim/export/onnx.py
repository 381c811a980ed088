"""Exporting to ONNX, with a parity check of ONNX Runtime's output against PyTorch's."""

from __future__ import annotations

import logging
import os
import warnings
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

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "max_abs_error": self.max_abs_error,
                "top1_agreement": self.top1_agreement}  # fmt: skip


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, example_input: torch.Tensor,
                opset: int = 18) -> ExportResult:  # fmt: skip
    """Write ``model`` as ONNX (atomically) and check that ONNX Runtime reproduces PyTorch's output on the input."""
    dest = Path(path)
    with inference_mode(model):
        with atomic_path(dest) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export(_decoded_weights(model), example_input, tmp, opset)
        with torch.no_grad():
            expected = model(example_input).float().numpy()
    got = run_onnx(dest, example_input.numpy())
    err = float(abs(got - expected).max()) if got.size else 0.0
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean()) if got.ndim >= 2 else 1.0
    return ExportResult(dest, dest.stat().st_size, err, agree)


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
