"""A DeviceProfile is frozen all the way down: its rate, depthwise-efficiency and sources mappings are read-only
copies, so neither the caller's dicts changing afterwards nor a write through the profile moves a prediction."""

import pytest

from deepslim.analysis.devices import DeviceProfile


def test_a_device_profiles_mappings_are_read_only_copies():
    peak, dw, sources = {"fp32": 1e9, "int8": 4e9}, {"fp32": 0.5}, {"peak": "datasheet p. 3"}
    dev = DeviceProfile(name="toy", description="a toy part", peak_macs_per_s=peak, mem_bandwidth_bytes_per_s=1e9,
                        onchip_bytes=1024, depthwise_efficiency=dw, sources=sources)  # fmt: skip
    peak["fp32"], dw["fp32"], sources["peak"] = 5.0, 1.0, "changed"
    assert dev.peak_macs_per_s["fp32"] == 1e9 and dev.depthwise_efficiency["fp32"] == 0.5
    assert dev.sources == {"peak": "datasheet p. 3"}
    for mapping in (dev.peak_macs_per_s, dev.depthwise_efficiency, dev.sources):
        with pytest.raises(TypeError):
            mapping["fp32"] = 2.0
