"""Choosing compression policies: per-layer sensitivity now; policy search under a budget later."""

from deepslim.search.sensitivity import Sensitivity, sensitivity

__all__ = ["Sensitivity", "sensitivity"]
