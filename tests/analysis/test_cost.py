import math

import pytest

import deepslim as ds
from deepslim.analysis.profile import LayerProfile, Profile


def _profile(*layers):
    return Profile(model="t", input_shapes=((1,),), layers=tuple(layers), params=0, nonzero_params=0,
                   weight_bytes=sum(lp.weight_bytes for lp in layers), macs=sum(lp.macs for lp in layers),
                   other_ops=0, activation_bytes=0, peak_activation_bytes=1000)  # fmt: skip


def test_one_dram_access_costs_about_200_macs():
    energy = ds.EnergyTable()
    assert energy.dram_access_in_macs("int32") == pytest.approx(200)  # 640 pJ / (3.1 + 0.1) pJ
    assert energy.mac_pj("fp32") == pytest.approx(4.6) and energy.mac_pj("int8") == pytest.approx(0.3)
    assert energy.dram_pj_per_32bit / energy.sram_pj_per_32bit == 128


def test_roofline_names_the_bound():
    dev = ds.DeviceProfile(name="toy", description="", peak_macs_per_s={"fp32": 1e9, "int8": 4e9},
                           mem_bandwidth_bytes_per_s=1e9, onchip_bytes=10_000)  # fmt: skip
    compute = LayerProfile(name="conv", type="Conv2d", calls=1, macs=10_000_000, weight_bytes=1000)
    memory = LayerProfile(name="fc", type="Linear", calls=1, macs=1_000_000, weight_bytes=4_000_000)
    quant = LayerProfile(name="q", type="Linear", calls=1, macs=10_000_000, weight_bytes=1000, dtype="int8")
    cost = ds.estimate_cost(_profile(compute, memory, quant), dev)
    assert cost.layer("conv").bound == "compute" and cost.layer("conv").latency_ms == pytest.approx(10.0)
    assert cost.layer("fc").bound == "memory" and cost.layer("fc").latency_ms == pytest.approx(4.0)
    assert cost.layer("q").latency_ms == pytest.approx(2.5)  # int8 runs at the int8 rate
    assert cost.latency_ms == pytest.approx(16.5)
    assert cost.memory_bound_fraction == pytest.approx(4.0 / 16.5)


def test_energy_split_and_fits_on_chip():
    dev = ds.DeviceProfile(name="toy", description="", peak_macs_per_s={"fp32": 1e9},
                           mem_bandwidth_bytes_per_s=1e9, onchip_bytes=10_000)  # fmt: skip
    lp = LayerProfile(name="fc", type="Linear", calls=1, macs=1000, weight_bytes=40_000, input_bytes=400,
                      output_bytes=40)
    cost = ds.estimate_cost(_profile(lp), dev)
    lc = cost.layer("fc")
    assert lc.energy_compute_uj == pytest.approx(1000 * 4.6e-6)
    assert lc.energy_onchip_uj == pytest.approx(40_440 / 4 * 5e-6)
    assert lc.energy_offchip_uj == pytest.approx(40_000 / 4 * 640e-6)  # weights don't fit: they come from DRAM
    assert not cost.weights_fit_on_chip and cost.activations_fit_on_chip
    assert cost.energy_uj == pytest.approx(lc.energy_compute_uj + lc.energy_onchip_uj + lc.energy_offchip_uj)


def test_every_device_cites_its_figures():
    for name in ds.list_devices():
        if name == "host":
            continue
        dev = ds.get_device(name)
        for key in (*dev.peak_macs_per_s, "bandwidth", "onchip"):
            assert dev.sources.get(key), f"{name} has no source for {key}"
    assert {"cortex-m7", "rpi4", "snapdragon865", "jetson-nano", "xeon-8380", "h100", "host"} <= set(ds.list_devices())


def test_host_is_calibrated_by_measurement():
    host = ds.get_device("host")
    assert host.calibrated and host.peak_for("fp32") > 1e8 and host.peak_for("int8") > 1e8
    assert host.mem_bandwidth_bytes_per_s > 1e8 and host.onchip_bytes > 0 and 0 < host.op_overhead_s < 1e-3
    assert ds.get_device("host") is host  # measured once per process


def test_profile_with_device_on_real_model():
    prof = ds.profile("resnet18", device="rpi4")
    cost = prof.cost
    assert cost is not None and not cost.weights_fit_on_chip
    # the roofline total is at least the pure compute time at peak
    assert cost.latency_ms >= prof.macs / 48e9 * 1e3
    assert math.isclose(cost.latency_ms, sum(lc.latency_ms for lc in cost.layers))
    assert prof.to_dict()["cost"]["device"]["name"] == "rpi4"


def test_unknown_device_and_bad_profiles():
    with pytest.raises(ds.UnknownNameError, match="known devices: .*rpi4"):
        ds.get_device("rpi5")
    with pytest.raises(ds.ConfigError, match="fp32 peak"):
        ds.DeviceProfile(name="x", description="", peak_macs_per_s={"int8": 1.0}, mem_bandwidth_bytes_per_s=1,
                         onchip_bytes=1)  # fmt: skip


def test_depthwise_convolutions_are_counted_and_charged_at_their_own_rate():
    import torch

    import deepslim as ds
    from deepslim.analysis import DeviceProfile

    model = ds.create_model("mobilenet_v2")
    prof = ds.profile(model, torch.randn(1, 3, 224, 224))
    dw = sum(lp.depthwise_macs for lp in prof.layers)
    depthwise = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert len(depthwise) == 17 and dw == sum(lp.macs for lp in prof.layers if lp.name in depthwise)
    assert 0 < dw < 0.1 * prof.macs  # 3x3 depthwise: a few percent of MobileNetV2's MACs
    fast = DeviceProfile(name="a", description="", peak_macs_per_s={"fp32": 1e11}, mem_bandwidth_bytes_per_s=1e13,
                         onchip_bytes=1 << 30)  # fmt: skip
    slow_dw = DeviceProfile(name="b", description="", peak_macs_per_s={"fp32": 1e11}, mem_bandwidth_bytes_per_s=1e13,
                            onchip_bytes=1 << 30, depthwise_efficiency={"fp32": 0.1})  # fmt: skip
    a, b = ds.estimate_cost(prof, fast), ds.estimate_cost(prof, slow_dw)
    # compute-bound on both: the difference is exactly the depthwise MACs at a tenth of the rate
    extra = sum(lc.compute_ms for lc in b.layers) - sum(lc.compute_ms for lc in a.layers)
    assert abs(extra - dw * 9 / 1e11 * 1e3) < 1e-6


def test_devices_state_their_main_memory_with_a_source():
    from deepslim.analysis.devices import get_device

    assert get_device("rpi4").dram_bytes == 4 * 1024**3 and "LPDDR4" in get_device("rpi4").sources["dram"]
    assert get_device("h100").dram_bytes == 80 * 1024**3
    mcu = get_device("cortex-m7")
    assert mcu.dram_bytes is None and mcu.to_dict()["dram_bytes"] is None  # a microcontroller has only its SRAM
    for name in ("rpi4", "snapdragon865", "jetson-nano", "h100"):
        dev = get_device(name)
        assert dev.dram_bytes > dev.onchip_bytes and "dram" in dev.sources
