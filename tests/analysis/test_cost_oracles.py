"""The roofline cost model against numbers worked out by hand: depthwise MACs at their own rate, per-call overhead,
the on-chip bandwidth for layers that fit, sub-8-bit integers on int8 units, and each DRAM rule at its boundary."""

import pytest

import deepslim as ds
from deepslim.analysis.profile import LayerProfile, Profile

DEV = ds.DeviceProfile(name="toy", description="", peak_macs_per_s={"fp32": 1e9, "int8": 4e9},
                       mem_bandwidth_bytes_per_s=1e9, onchip_bytes=10_000, onchip_bandwidth_bytes_per_s=1e10,
                       op_overhead_s=1e-6, depthwise_efficiency={"fp32": 0.5, "int8": 0.25})  # fmt: skip

# fits on chip (5,000 moved + 1,000 weights <= 10,000): 3 ms of compute, half of it depthwise at half the rate
DW = LayerProfile(name="dw", type="Conv2d", calls=2, macs=2_000_000, depthwise_macs=1_000_000, other_ops=100,
                  weight_bytes=1000, input_bytes=2000, output_bytes=2000)  # fmt: skip
# 4-bit integers on the int8 units; 20,500 bytes from DRAM dominate 10,000 MACs
Q4 = LayerProfile(name="q4", type="Linear", calls=1, macs=10_000, weight_bytes=20_000, input_bytes=400,
                  output_bytes=100, dtype="int4")  # fmt: skip
RESHAPE = LayerProfile(name="view", type="Flatten", calls=1, input_bytes=40, output_bytes=40)  # no arithmetic
UNUSED = LayerProfile(name="unused", type="Linear", weight_bytes=400)  # never called


def _profile(*layers, peak=1000):
    return Profile(model="t", input_shapes=((1,),), layers=tuple(layers), params=0, nonzero_params=0,
                   weight_bytes=sum(lp.weight_bytes for lp in layers), macs=sum(lp.macs for lp in layers),
                   other_ops=0, activation_bytes=0, peak_activation_bytes=peak)  # fmt: skip


def test_latency_golden_values():
    cost = ds.estimate_cost(_profile(DW, Q4, RESHAPE, UNUSED), DEV)
    assert [lc.name for lc in cost.layers] == ["dw", "q4", "view"]  # a layer never called costs nothing
    dw, q4, view = cost.layers
    assert dw.compute_ms == pytest.approx(1.0 + 2.0) and dw.memory_ms == pytest.approx(5000 / 1e10 * 1e3)
    assert dw.latency_ms == pytest.approx(3.0 + 2 * 1e-3) and dw.bound == "compute"  # + overhead of 2 calls
    assert q4.compute_ms == pytest.approx(10_000 / 4e9 * 1e3) and q4.memory_ms == pytest.approx(20_500 / 1e9 * 1e3)
    assert q4.latency_ms == pytest.approx(0.0205 + 0.001) and q4.bound == "memory"
    assert view.compute_ms == 0.0 and view.latency_ms == pytest.approx(80 / 1e10 * 1e3)  # no overhead without ops
    assert cost.latency_ms == pytest.approx(3.002 + 0.0215 + 80 / 1e10 * 1e3)
    assert cost.memory_bound_fraction == pytest.approx((0.0215 + 8e-6) / cost.latency_ms)


def test_energy_golden_values_when_the_weights_do_not_fit():
    cost = ds.estimate_cost(_profile(DW, Q4), DEV)
    assert not cost.weights_fit_on_chip  # 21,000 weight bytes > 10,000
    dw, q4 = cost.layers
    assert dw.energy_compute_uj == pytest.approx((2_000_000 * 4.6 + 100 * 0.9) * 1e-6)
    assert dw.energy_onchip_uj == pytest.approx(5000 / 4 * 5.0 * 1e-6)
    assert dw.energy_offchip_uj == pytest.approx(1000 / 4 * 640 * 1e-6)  # its weights, not its activations
    assert q4.energy_compute_uj == pytest.approx(10_000 * 0.3 * 1e-6)  # int4: an 8-bit multiply, 32-bit add
    assert q4.energy_offchip_uj == pytest.approx(20_000 / 4 * 640 * 1e-6)
    assert dw.energy_uj == pytest.approx(dw.energy_compute_uj + dw.energy_onchip_uj + dw.energy_offchip_uj)
    assert cost.energy_compute_uj == pytest.approx(dw.energy_compute_uj + q4.energy_compute_uj)
    assert cost.energy_onchip_uj == pytest.approx(dw.energy_onchip_uj + q4.energy_onchip_uj)
    assert cost.energy_offchip_uj == pytest.approx(dw.energy_offchip_uj + q4.energy_offchip_uj)
    assert cost.energy_uj == pytest.approx(cost.energy_compute_uj + cost.energy_onchip_uj + cost.energy_offchip_uj)


@pytest.mark.parametrize(("act_in", "offchip_bytes"), [(5000, 0), (5001, 9001)])
def test_activations_go_to_dram_only_when_they_and_the_weights_overflow_the_chip(act_in, offchip_bytes):
    # weights fit (1,000 bytes); activations + weights = 10,000 fits exactly, one byte more does not
    layer = LayerProfile(name="fc", type="Linear", calls=1, macs=10, weight_bytes=1000, input_bytes=act_in,
                         output_bytes=4000)  # fmt: skip
    cost = ds.estimate_cost(_profile(layer), DEV)
    assert cost.weights_fit_on_chip
    assert cost.layer("fc").energy_offchip_uj == pytest.approx(offchip_bytes / 4 * 640 * 1e-6)


def test_on_chip_bandwidth_applies_only_to_layers_that_fit_and_only_when_known():
    fits = LayerProfile(name="a", type="Linear", calls=1, weight_bytes=3000, input_bytes=2000, output_bytes=2000)
    spills = LayerProfile(name="b", type="Linear", calls=1, weight_bytes=3000, input_bytes=2000, output_bytes=2001)
    cost = ds.estimate_cost(_profile(fits, spills), DEV)  # 7,000 moved + 3,000 weights = 10,000 fits; 10,001 not
    assert cost.layer("a").memory_ms == pytest.approx(7000 / 1e10 * 1e3)
    assert cost.layer("b").memory_ms == pytest.approx(7001 / 1e9 * 1e3)
    plain = ds.DeviceProfile(name="p", description="", peak_macs_per_s={"fp32": 1e9}, mem_bandwidth_bytes_per_s=1e9,
                             onchip_bytes=10_000)  # fmt: skip
    assert ds.estimate_cost(_profile(fits), plain).layer("a").memory_ms == pytest.approx(7000 / 1e9 * 1e3)


def test_activation_fit_boundary_and_dictionary():
    assert ds.estimate_cost(_profile(DW, peak=10_000), DEV).activations_fit_on_chip
    cost = ds.estimate_cost(_profile(DW, Q4, peak=10_001), DEV)
    assert not cost.activations_fit_on_chip
    d = cost.to_dict()
    assert d["device"]["name"] == "toy" and d["latency_ms"] == cost.latency_ms and d["energy_uj"] == cost.energy_uj
    assert (d["weights_fit_on_chip"], d["activations_fit_on_chip"]) == (False, False)
    assert d["memory_bound_fraction"] == cost.memory_bound_fraction
    assert [layer["name"] for layer in d["layers"]] == ["dw", "q4"]
    assert d["layers"][1]["bound"] == "memory" and d["layers"][0]["energy_uj"] == cost.layers[0].energy_uj
    assert d["energy_offchip_uj"] == cost.energy_offchip_uj and d["energy_onchip_uj"] == cost.energy_onchip_uj
    assert d["energy_compute_uj"] == cost.energy_compute_uj
    assert ds.estimate_cost(_profile(RESHAPE), DEV).memory_bound_fraction == 1.0
    assert ds.estimate_cost(_profile(UNUSED), DEV).memory_bound_fraction == 0.0  # nothing runs: no division by 0


@pytest.mark.parametrize(("dtype", "rate"), [("int8", 4e9 * 0.25), ("int4", 4e9 * 0.25), ("fp16", 1e9)])
def test_depthwise_rate_of_integer_and_unlisted_dtypes(dtype, rate):
    # int4 uses the int8 efficiency; fp16 has none listed (full peak) and no fp16 peak (the fp32 rate)
    layer = LayerProfile(name="dw", type="Conv2d", calls=1, macs=1_000_000, depthwise_macs=1_000_000, dtype=dtype)
    assert ds.estimate_cost(_profile(layer), DEV).layer("dw").compute_ms == pytest.approx(1e6 / rate * 1e3)


def test_weights_that_fill_the_chip_exactly_fit():
    layer = LayerProfile(name="fc", type="Linear", calls=1, macs=1, weight_bytes=10_000)
    cost = ds.estimate_cost(_profile(layer), DEV)
    assert cost.weights_fit_on_chip and cost.layer("fc").energy_offchip_uj == 0.0


@pytest.mark.parametrize(("act_in", "offchip_bytes"), [(6000, 20_000), (6001, 20_000 + 10_001)])
def test_weights_off_chip_and_activations_at_the_chips_size(act_in, offchip_bytes):
    # the weights (20,000) never fit: they come from DRAM; 10,000 activation bytes alone still fit, 10,001 do not
    layer = LayerProfile(name="fc", type="Linear", calls=1, macs=10, weight_bytes=20_000, input_bytes=act_in,
                         output_bytes=4000)  # fmt: skip
    cost = ds.estimate_cost(_profile(layer), DEV)
    assert not cost.weights_fit_on_chip
    assert cost.layer("fc").energy_offchip_uj == pytest.approx(offchip_bytes / 4 * 640 * 1e-6)


def test_a_layer_exactly_on_the_ridge_is_called_compute_bound():
    plain = ds.DeviceProfile(name="p", description="", peak_macs_per_s={"fp32": 1e9}, mem_bandwidth_bytes_per_s=1e9,
                             onchip_bytes=10_000)  # fmt: skip
    ridge = LayerProfile(name="r", type="Linear", calls=1, macs=1000, weight_bytes=600, input_bytes=300,
                         output_bytes=100)  # fmt: skip
    lc = ds.estimate_cost(_profile(ridge), plain).layer("r")
    assert lc.compute_ms == lc.memory_ms and lc.bound == "compute"
