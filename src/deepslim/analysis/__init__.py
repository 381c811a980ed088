"""Measuring what a model costs: the profiler, device profiles and the roofline/energy cost model."""

from deepslim.analysis._format import (
    format_time_profile,
    human,
    profile_rows,
    summary_lines,
    time_rows,
    time_summary_lines,
)
from deepslim.analysis._tracer import Example
from deepslim.analysis._tracer import _as_call as as_call  # an example input as (args, kwargs) of a call
from deepslim.analysis.blocks import BlockTime, NodeTime, TimeProfile
from deepslim.analysis.cost import CostEstimate, LayerCost, estimate_cost
from deepslim.analysis.devices import DeviceProfile, EnergyTable, get_device, list_devices, register_device
from deepslim.analysis.onnx_profile import time_onnx
from deepslim.analysis.profile import LayerProfile, Profile, profile

__all__ = [
    "BlockTime",
    "CostEstimate",
    "DeviceProfile",
    "EnergyTable",
    "LayerCost",
    "LayerProfile",
    "Profile",
    "Example",
    "NodeTime",
    "TimeProfile",
    "as_call",
    "estimate_cost",
    "format_time_profile",
    "get_device",
    "human",
    "list_devices",
    "profile",
    "profile_rows",
    "register_device",
    "summary_lines",
    "time_onnx",
    "time_rows",
    "time_summary_lines",
]
