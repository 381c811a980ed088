"""ExecuTorch export: a ``.pte`` program with its operators delegated to XNNPACK (the optional ``executorch`` extra).

Checked here with executorch 1.5.1 beside torch 2.13.0 (``pip install 'deepslim[executorch]'``): fp32 models export and
run in ExecuTorch's Python runtime. Linearly quantized deepslim models are exported with their decoded (fake-quantized)
weights as fp32 programs — ExecuTorch's integer path uses its own PT2E quantizer, which deepslim does not drive yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim._modes import inference_mode
from deepslim.errors import ExportError

INSTALL_HINT = "pip install 'deepslim[executorch]' (executorch 1.5.1 works with torch 2.13.0)"


@dataclass(frozen=True)
class PteResult:
    path: Path
    size_bytes: int
    max_abs_error: float  # ExecuTorch runtime vs PyTorch on the example input
    top1_agreement: float
    delegated: bool  # operators handed to XNNPACK

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "max_abs_error": self.max_abs_error,
                "top1_agreement": self.top1_agreement, "delegated": self.delegated}  # fmt: skip


def available() -> bool:
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        return False
    return True


def export_executorch(model: nn.Module, path: str | os.PathLike[str], *, example_input: torch.Tensor,
                      xnnpack: bool = True) -> PteResult:  # fmt: skip
    """Write ``model`` as an ExecuTorch program (atomically) and check the runtime's output against PyTorch's."""
    if not available():
        raise ExportError(f"ExecuTorch is not installed: {INSTALL_HINT}")
    from executorch.exir import to_edge_transform_and_lower

    from deepslim.export.onnx import _decoded_weights
    from deepslim.export.qdq import float_copy

    dest = Path(path)
    plain = _decoded_weights(float_copy(model))
    with inference_mode(plain):
        try:
            program = torch.export.export(plain, (example_input,))
            partitioners = []
            if xnnpack:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

                partitioners = [XnnpackPartitioner()]
            lowered = to_edge_transform_and_lower(program, partitioner=partitioners).to_executorch()
        except Exception as exc:
            raise ExportError(f"ExecuTorch export failed: {str(exc).strip().splitlines()[0]}") from exc
        with atomic_path(dest) as tmp:
            tmp.write_bytes(lowered.buffer)
        with torch.no_grad():
            expected = model(example_input).float()
    got = run_pte(dest, example_input)
    err = float((got - expected).abs().max()) if got.numel() else 0.0
    agree = float((got.argmax(-1) == expected.argmax(-1)).float().mean()) if got.ndim >= 2 else 1.0
    return PteResult(dest, dest.stat().st_size, err, agree, bool(xnnpack))


def _method(path: Path) -> Any:
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def run_pte(path: str | os.PathLike[str], x: torch.Tensor) -> torch.Tensor:
    if not available():
        raise ExportError(f"ExecuTorch is not installed: {INSTALL_HINT}")
    return _method(Path(path)).execute([x])[0]


def time_pte(path: str | os.PathLike[str], x: torch.Tensor, min_seconds: float = 1.0) -> list[float]:
    """Milliseconds per call of an ExecuTorch program (after warm-up), for benchmarks."""
    from deepslim.export.bench import time_calls

    method = _method(Path(path))
    return time_calls(lambda: method.execute([x]), min_seconds=min_seconds)
