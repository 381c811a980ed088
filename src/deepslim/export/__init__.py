"""Export to real runtimes and measure them there."""

from deepslim.export.bench import BenchResult, CompareResult, benchmark, compare, interleave, time_calls
from deepslim.export.onnx import ExportResult, export_onnx

__all__ = ["BenchResult", "CompareResult", "ExportResult", "benchmark", "compare", "export_onnx", "interleave",
           "time_calls"]
