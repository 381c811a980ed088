"""The cost model: roofline latency and an energy split for a profiled model on a device.

Latency, per layer (Williams et al., "Roofline", CACM 2009): ``max(MACs / peak rate, bytes moved / bandwidth)`` plus
the device's per-layer overhead, with the bound (compute or memory) named; layers run one after another, so the
model's latency is the sum. Energy, per layer, from the device's energy table (Horowitz, ISSCC 2014):
- compute: MACs × (multiply + accumulate) energy, plus other arithmetic (norms, activations) × add energy;
- on-chip memory: every byte a layer reads or writes passes through on-chip SRAM once;
- off-chip memory: weights come from DRAM unless all of the model's weights fit on chip (then they are loaded once
  and amortized); a layer's activations come from and go to DRAM when they do not fit on chip beside its weights.
Batch 1, steady state. These are estimates for comparing designs; ``benchmark`` measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepslim.analysis.devices import DeviceProfile, get_device

if TYPE_CHECKING:
    from deepslim.analysis.profile import LayerProfile, Profile


@dataclass(frozen=True)
class LayerCost:
    name: str
    compute_ms: float
    memory_ms: float
    latency_ms: float
    bound: str  # "compute" | "memory"
    energy_compute_uj: float
    energy_onchip_uj: float
    energy_offchip_uj: float

    @property
    def energy_uj(self) -> float:
        return self.energy_compute_uj + self.energy_onchip_uj + self.energy_offchip_uj

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "energy_uj": self.energy_uj}


@dataclass(frozen=True)
class CostEstimate:
    device: DeviceProfile
    layers: tuple[LayerCost, ...]
    weights_fit_on_chip: bool
    activations_fit_on_chip: bool

    @property
    def latency_ms(self) -> float:
        return sum(lc.latency_ms for lc in self.layers)

    @property
    def energy_compute_uj(self) -> float:
        return sum(lc.energy_compute_uj for lc in self.layers)

    @property
    def energy_onchip_uj(self) -> float:
        return sum(lc.energy_onchip_uj for lc in self.layers)

    @property
    def energy_offchip_uj(self) -> float:
        return sum(lc.energy_offchip_uj for lc in self.layers)

    @property
    def energy_uj(self) -> float:
        return self.energy_compute_uj + self.energy_onchip_uj + self.energy_offchip_uj

    @property
    def memory_bound_fraction(self) -> float:
        """Share of the estimated latency spent in memory-bound layers."""
        total = self.latency_ms
        return sum(lc.latency_ms for lc in self.layers if lc.bound == "memory") / total if total else 0.0

    def layer(self, name: str) -> LayerCost:
        return next(lc for lc in self.layers if lc.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device.to_dict(),
            "latency_ms": self.latency_ms,
            "energy_uj": self.energy_uj,
            "energy_compute_uj": self.energy_compute_uj,
            "energy_onchip_uj": self.energy_onchip_uj,
            "energy_offchip_uj": self.energy_offchip_uj,
            "memory_bound_fraction": self.memory_bound_fraction,
            "weights_fit_on_chip": self.weights_fit_on_chip,
            "activations_fit_on_chip": self.activations_fit_on_chip,
            "layers": [lc.to_dict() for lc in self.layers],
        }


def estimate_cost(profile: Profile, device: str | DeviceProfile) -> CostEstimate:
    """Roofline latency and energy of every layer of ``profile`` on ``device``."""
    dev = get_device(device)
    weights_fit = profile.weight_bytes <= dev.onchip_bytes
    layers = tuple(_layer_cost(lp, dev, weights_fit) for lp in profile.layers if lp.calls or lp.macs)
    return CostEstimate(
        device=dev,
        layers=layers,
        weights_fit_on_chip=weights_fit,
        activations_fit_on_chip=profile.peak_activation_bytes <= dev.onchip_bytes,
    )


def _layer_cost(lp: LayerProfile, dev: DeviceProfile, weights_fit: bool) -> LayerCost:
    peak = dev.peak_for(lp.dtype)
    dw_rate = peak * dev.depthwise_efficiency.get("int8" if lp.dtype.startswith("int") else lp.dtype, 1.0)
    compute_s = (lp.macs - lp.depthwise_macs) / peak + lp.depthwise_macs / dw_rate
    onchip = dev.onchip_bandwidth_bytes_per_s
    in_cache = bool(onchip) and lp.bytes_moved + lp.weight_bytes <= dev.onchip_bytes
    memory_s = lp.bytes_moved / (onchip if onchip and in_cache else dev.mem_bandwidth_bytes_per_s)
    latency_s = max(compute_s, memory_s) + (dev.op_overhead_s * lp.calls if lp.macs or lp.other_ops else 0.0)
    e = dev.energy
    compute_pj = lp.macs * e.mac_pj(lp.dtype) + lp.other_ops * e.add_energy_pj(lp.dtype)
    onchip_pj = lp.bytes_moved / 4 * e.sram_pj_per_32bit
    act_bytes = lp.input_bytes + lp.output_bytes
    offchip_bytes = (0 if weights_fit else lp.weight_bytes)
    if act_bytes + (lp.weight_bytes if weights_fit else 0) > dev.onchip_bytes:
        offchip_bytes += act_bytes
    offchip_pj = offchip_bytes / 4 * e.dram_pj_per_32bit
    return LayerCost(
        name=lp.name,
        compute_ms=compute_s * 1e3,
        memory_ms=memory_s * 1e3,
        latency_ms=latency_s * 1e3,
        bound="compute" if compute_s >= memory_s else "memory",
        energy_compute_uj=compute_pj * 1e-6,
        energy_onchip_uj=onchip_pj * 1e-6,
        energy_offchip_uj=offchip_pj * 1e-6,
    )
