"""Export to real runtimes and measure them there."""

from deepslim.export._mixed_int8 import FloatSelection, FusedInt8Config
from deepslim.export._torchscript import (
    FusedInt8Result,
    FusedInt8Sensitivity,
    export_fused_int8,
    fused_int8_sensitivity,
)
from deepslim.export.bench import RUNTIMES, BenchResult, CompareResult, benchmark, compare, interleave, time_calls
from deepslim.export.onnx import ExportResult, export_onnx
from deepslim.export.openvino import OpenVinoResult, export_openvino

__all__ = ["BenchResult", "CompareResult", "ExportResult", "FloatSelection", "FusedInt8Config", "FusedInt8Result",
           "FusedInt8Sensitivity", "OpenVinoResult", "RUNTIMES", "benchmark", "compare", "export_fused_int8",
           "export_onnx", "export_openvino", "fused_int8_sensitivity", "interleave", "time_calls"]
