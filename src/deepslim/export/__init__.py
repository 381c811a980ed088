"""Export to real runtimes and measure them there."""

from deepslim.export.bench import BenchResult, benchmark, time_calls
from deepslim.export.onnx import ExportResult, export_onnx

__all__ = ["BenchResult", "ExportResult", "benchmark", "export_onnx", "time_calls"]
