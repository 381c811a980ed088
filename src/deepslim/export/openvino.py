"""OpenVINO as a second CPU runtime (the optional ``openvino`` extra): run, inspect and convert deepslim's ONNX files.

OpenVINO reads ONNX directly, QDQ integer files included: its low-precision transformations turn each
``DequantizeLinear → Conv/Gemm`` into an int8 kernel (u8 activations, i8 weights), like ONNX Runtime's ``QLinearConv``.
:func:`layer_precisions` reads the compiled model's runtime graph to say how many compute layers really run in int8.
fp32 files are compiled with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 units the plugin would otherwise run
them in bf16 (runtime "openvino-bf16" asks for that explicitly). Checked with openvino 2026.4.1 beside torch 2.13.0.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim.errors import ExportError

INSTALL_HINT = "pip install 'deepslim[openvino]' (openvino 2026.4.1 works beside torch 2.13.0)"
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
RUNTIMES = ("openvino", "openvino-bf16")


@dataclass(frozen=True)
class LayerPrecisions:
    """The compute layers (convolutions, fully connected, MatMul) of a compiled model and how many run in int8."""

    compute_layers: int
    integer_layers: int  # runtime precision u8 or i8
    kernels: tuple[str, ...] = ()  # each compute layer's primitive, e.g. "brgconv_avx512_amx_I8"


@dataclass(frozen=True)
class OpenVinoResult:
    path: Path  # the .xml; its weights are beside it in the .bin of the same name
    size_bytes: int  # .xml + .bin
    max_abs_error: float  # OpenVINO vs PyTorch on the example input
    cosine: float
    top1_agreement: float
    compute_layers: int
    integer_layers: int

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> Any:
    if not available():
        raise ExportError(f"OpenVINO is not installed: {INSTALL_HINT}")
    import openvino as ov

    return ov


def compile_model(path: str | os.PathLike[str], *, threads: int | None = None, runtime: str = "openvino") -> Any:
    """An OpenVINO ``CompiledModel`` of an .onnx or .xml file on the CPU, set up as deepslim's benchmarks run it."""
    from deepslim.export._worker import openvino_config

    ov = _require()
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(path)), "CPU", openvino_config(threads, True, runtime))
    except Exception as exc:
        raise ExportError(f"OpenVINO cannot compile {path}: {str(exc).strip().splitlines()[0]}") from exc


def run_openvino(path: str | os.PathLike[str], x: torch.Tensor | np.ndarray, *, threads: int | None = None,
                 runtime: str = "openvino") -> np.ndarray:  # fmt: skip
    """The first output of ``path`` run in OpenVINO's CPU plugin on ``x``."""
    feed = x.detach().numpy() if isinstance(x, torch.Tensor) else x
    return np.asarray(compile_model(path, threads=threads, runtime=runtime)([feed])[0])


def layer_precisions(path: str | os.PathLike[str] | Any, *, runtime: str = "openvino") -> LayerPrecisions:
    """How many of the compiled model's compute layers run on int8 kernels (its runtime graph's precisions)."""
    compiled = compile_model(path, runtime=runtime) if isinstance(path, (str, os.PathLike)) else path
    kinds: list[tuple[str, str]] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            kinds.append((info["runtimePrecision"].astype(str), info["primitiveType"].astype(str)))
    return LayerPrecisions(len(kinds), sum(p in ("u8", "i8") for p, _ in kinds), tuple(k for _, k in kinds))


def export_openvino(model: nn.Module, path: str | os.PathLike[str], *, example_input: torch.Tensor,
                    calib_data: Any = None, min_cosine: float = 0.98) -> OpenVinoResult:  # fmt: skip
    """Write ``model`` as OpenVINO IR (``path`` .xml and its .bin, weights kept in full precision).

    Goes through :func:`deepslim.export.export_onnx` (a quantized model becomes a QDQ graph, which OpenVINO runs in
    int8) and ``openvino.convert_model``; OpenVINO's output is checked against PyTorch's, and a cosine below
    ``min_cosine`` is an ``ExportError`` (no file is written).
    """
    ov = _require()
    from deepslim.export.onnx import export_onnx

    dest = Path(path)
    if dest.suffix != ".xml":
        raise ExportError(f"{dest}: OpenVINO IR is written as an .xml file (its weights go beside it in a .bin)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.stem}.tmp-", dir=dest.parent) as work:  # renames stay on one disk
        onnx_path = Path(work) / "model.onnx"
        export_onnx(model, onnx_path, example_input=example_input, calib_data=calib_data)
        xml = Path(work) / "model.xml"
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        compiled = compile_model(xml)
        got = np.asarray(compiled([example_input.numpy()])[0], np.float64)
        with torch.no_grad():
            expected = model(example_input).float().numpy().astype(np.float64)
        cos = float(got.ravel() @ expected.ravel() / max(np.linalg.norm(got) * np.linalg.norm(expected), 1e-30))
        if cos < min_cosine:
            raise ExportError(f"OpenVINO's output disagrees with PyTorch's (cosine {cos:.3f} < {min_cosine}); "
                              "check the ONNX file with export_onnx first")  # fmt: skip
        prec = layer_precisions(compiled)
        os.replace(xml.with_suffix(".bin"), dest.with_suffix(".bin"))
        os.replace(xml, dest)
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean()) if got.ndim >= 2 else 1.0
    size = dest.stat().st_size + dest.with_suffix(".bin").stat().st_size
    return OpenVinoResult(dest, size, float(np.abs(got - expected).max()), cos, agree, prec.compute_layers,
                          prec.integer_layers)  # fmt: skip
