"""Measuring what a model costs: the profiler, device profiles and the roofline/energy cost model."""

from deepslim.analysis._format import human, profile_rows, summary_lines
from deepslim.analysis._tracer import Example
from deepslim.analysis._tracer import _as_call as as_call  # an example input as (args, kwargs) of a call
from deepslim.analysis.cost import CostEstimate, LayerCost, estimate_cost
from deepslim.analysis.devices import DeviceProfile, EnergyTable, get_device, list_devices, register_device
from deepslim.analysis.profile import LayerProfile, Profile, profile

__all__ = [
    "Example", "as_call",
    "CostEstimate",
    "DeviceProfile",
    "EnergyTable",
    "LayerCost",
    "LayerProfile",
    "Profile",
    "estimate_cost",
    "get_device",
    "human",
    "list_devices",
    "profile",
    "profile_rows",
    "register_device",
    "summary_lines",
]
