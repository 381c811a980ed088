"""Device profiles: peak arithmetic rates, memory bandwidth, on-chip memory and energy, each with its source.

Peak rates are per device, all cores, from the vendors' specifications (MAC/s; one MAC = one multiply-accumulate =
two FLOPs). They are ceilings: real kernels reach a fraction of them, which is why ``host`` is calibrated by
measurement instead. Energy per operation is the 45 nm table of Horowitz (ISSCC 2014) for every device, as the
efficient-deep-learning literature uses it; absolute energies on newer process nodes are lower, but the ratios —
a 32-bit DRAM access costs as much as ~200 32-bit integer MACs — are what the estimate is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from deepslim.errors import ConfigError, UnknownNameError

HOROWITZ = "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm"


@dataclass(frozen=True, kw_only=True)
class EnergyTable:
    """Energy per operation and per memory access in picojoules."""

    mult_pj: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"int8": 0.2, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}))  # fmt: skip
    add_pj: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"int8": 0.03, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}))  # fmt: skip
    sram_pj_per_32bit: float = 5.0  # 32-bit read from a small (8 KB) SRAM / cache
    dram_pj_per_32bit: float = 640.0  # 32-bit read from off-chip DRAM
    source: str = f"{HOROWITZ}; memory figures as quoted by Han et al., Deep Compression, ICLR 2016, Fig. 1"

    def mac_pj(self, dtype: str) -> float:
        """One multiply plus one accumulate. Integer MACs accumulate in 32 bits (int8×int8 → int32 add)."""
        kind = _energy_dtype(dtype)
        acc = "int32" if kind in ("int8", "int32") else kind
        return self.mult_pj[kind] + self.add_pj[acc]

    def add_energy_pj(self, dtype: str) -> float:
        return self.add_pj[_energy_dtype(dtype)]

    def dram_access_in_macs(self, dtype: str = "int32") -> float:
        """How many MACs of ``dtype`` cost as much energy as one 32-bit DRAM read (≈ 200 for int32)."""
        return self.dram_pj_per_32bit / self.mac_pj(dtype)


def _energy_dtype(dtype: str) -> str:
    """The row of Horowitz's table that an arithmetic type uses; narrower integers run on 8-bit units."""
    if dtype in ("fp16", "bf16"):
        return "fp16"
    if dtype in ("int32", "int64"):
        return "int32"
    if dtype.startswith(("int", "uint")):
        return "int8"
    return "fp32"


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """A target device for the cost model."""

    name: str
    description: str
    peak_macs_per_s: Mapping[str, float]  # by arithmetic: "fp32", "fp16", "int8"
    mem_bandwidth_bytes_per_s: float
    onchip_bytes: int
    # main memory a program may use (None: no DRAM on the part, or it depends on the configuration)
    dram_bytes: int | None = None
    op_overhead_s: float = 0.0  # fixed cost of launching one layer's kernel(s)
    onchip_bandwidth_bytes_per_s: float | None = None  # for layers whose data fits on chip (None: as off-chip)
    # fraction of the peak rate that depthwise convolutions reach, by dtype (absent: the full peak)
    depthwise_efficiency: Mapping[str, float] = field(default_factory=dict)
    energy: EnergyTable = field(default_factory=EnergyTable)
    sources: Mapping[str, str] = field(default_factory=dict)
    calibrated: bool = False

    def __post_init__(self) -> None:
        if "fp32" not in self.peak_macs_per_s:
            raise ConfigError(f"device {self.name!r} needs an fp32 peak rate")
        if min(self.peak_macs_per_s.values()) <= 0 or self.mem_bandwidth_bytes_per_s <= 0 or self.onchip_bytes < 0:
            raise ConfigError(f"device {self.name!r}: rates and bandwidth must be positive")
        object.__setattr__(self, "peak_macs_per_s", MappingProxyType(dict(self.peak_macs_per_s)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        object.__setattr__(self, "depthwise_efficiency", MappingProxyType(dict(self.depthwise_efficiency)))

    def peak_for(self, dtype: str) -> float:
        """Peak MAC/s for ``dtype``; sub-8-bit integer arithmetic runs on int8 units, bf16 on fp16 units."""
        if dtype in self.peak_macs_per_s:
            return self.peak_macs_per_s[dtype]
        if dtype == "bf16" and "fp16" in self.peak_macs_per_s:
            return self.peak_macs_per_s["fp16"]
        if dtype.startswith("int") and "int8" in self.peak_macs_per_s and dtype not in ("int32", "int64"):
            return self.peak_macs_per_s["int8"]
        return self.peak_macs_per_s["fp32"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "peak_macs_per_s": dict(self.peak_macs_per_s),
            "mem_bandwidth_bytes_per_s": self.mem_bandwidth_bytes_per_s,
            "onchip_bytes": self.onchip_bytes,
            "dram_bytes": self.dram_bytes,
            "op_overhead_s": self.op_overhead_s,
            "calibrated": self.calibrated,
            "sources": dict(self.sources),
        }


G = 1e9
_DEVICES: dict[str, DeviceProfile] = {}


def register_device(device: DeviceProfile) -> DeviceProfile:
    _DEVICES[device.name] = device
    return device


register_device(DeviceProfile(
    name="cortex-m7",
    description="STM32H743 microcontroller: Arm Cortex-M7 at 480 MHz, 1 MB SRAM, weights in 2 MB flash",
    peak_macs_per_s={"fp32": 0.48 * G, "int8": 0.96 * G},
    mem_bandwidth_bytes_per_s=1.92 * G,
    onchip_bytes=1024 * 1024,
    sources={
        "fp32": "480 MHz x 1 single-precision FMA per cycle (Arm Cortex-M7 TRM, FPv5)",
        "int8": "480 MHz x 2 MACs per cycle with the SMLAD dual 16-bit MAC that CMSIS-NN uses for int8",
        "bandwidth": "64-bit AXI bus at 240 MHz (STM32H743 reference manual RM0433)",
        "onchip": "1 MB total SRAM (STM32H743 datasheet DS12110)",
    },
))  # fmt: skip
register_device(DeviceProfile(
    name="rpi4",
    description="Raspberry Pi 4 Model B: 4x Arm Cortex-A72 at 1.5 GHz, LPDDR4-3200, 1 MB shared L2",
    peak_macs_per_s={"fp32": 48 * G, "fp16": 48 * G, "int8": 96 * G},
    mem_bandwidth_bytes_per_s=12.8 * G,
    onchip_bytes=1024 * 1024,
    dram_bytes=4 * 1024**3,
    sources={
        "fp32": "4 cores x 1.5 GHz x 2 NEON pipes x 4 fp32 lanes (Cortex-A72 Software Optimization Guide)",
        "fp16": "Armv8.0 NEON has no fp16 arithmetic: fp16 runs at the fp32 rate",
        "int8": "2x fp32: 8 x 16-bit lanes per pipe with widening SMLAL (no SDOT on Armv8.0)",
        "bandwidth": "32-bit LPDDR4-3200: 3200 MT/s x 4 bytes (Raspberry Pi 4 product brief)",
        "onchip": "1 MB L2 shared by the four cores (BCM2711 documentation)",
        "dram": "4 GB LPDDR4 of the 4 GB model (1, 2 and 8 GB models exist; Raspberry Pi 4 product brief)",
    },
))  # fmt: skip
register_device(DeviceProfile(
    name="snapdragon865",
    description="Phone SoC: Qualcomm Snapdragon 865, big CPU cluster (4x Cortex-A77 at ~2.5 GHz), LPDDR5",
    peak_macs_per_s={"fp32": 80 * G, "fp16": 160 * G, "int8": 320 * G},
    mem_bandwidth_bytes_per_s=44 * G,
    onchip_bytes=4 * 1024 * 1024,
    dram_bytes=8 * 1024**3,
    sources={
        "fp32": "4 big cores x 2.5 GHz x 2 NEON pipes x 4 fp32 FMA lanes (Cortex-A77)",
        "fp16": "Armv8.2 fp16 arithmetic: 8 lanes per 128-bit pipe",
        "int8": "SDOT: 16 int8 MACs per 128-bit instruction, 2 pipes, 4 cores at 2.5 GHz",
        "bandwidth": "LPDDR5-2750, 4 x 16-bit channels (Qualcomm product brief)",
        "onchip": "4 MB system-level L3 cache (Qualcomm product brief)",
        "dram": "8 GB LPDDR5, the common size in Snapdragon 865 phones (e.g. Galaxy S20); an app gets part of it",
    },
))  # fmt: skip
register_device(DeviceProfile(
    name="jetson-nano",
    description="NVIDIA Jetson Nano: 128-core Maxwell GPU at 921 MHz, 4 GB LPDDR4",
    peak_macs_per_s={"fp32": 118 * G, "fp16": 236 * G, "int8": 118 * G},
    mem_bandwidth_bytes_per_s=25.6 * G,
    onchip_bytes=256 * 1024,
    dram_bytes=4 * 1024**3,
    sources={
        "fp32": "128 CUDA cores x 921 MHz x 1 FMA = 118 GMAC/s (235.8 GFLOPS)",
        "fp16": "472 GFLOPS fp16 (NVIDIA Jetson Nano datasheet) = 236 GMAC/s",
        "int8": "Maxwell (sm_53) has no DP4A: int8 runs at the fp32 rate",
        "bandwidth": "64-bit LPDDR4-3200, 25.6 GB/s (Jetson Nano datasheet)",
        "onchip": "256 KB GPU L2 cache (Maxwell GM20B)",
        "dram": "4 GB LPDDR4 shared by CPU and GPU (Jetson Nano datasheet)",
    },
))  # fmt: skip
register_device(DeviceProfile(
    name="xeon-8380",
    description="x86 server CPU: Intel Xeon Platinum 8380 (Ice Lake), 40 cores at 2.3 GHz, 8x DDR4-3200",
    peak_macs_per_s={"fp32": 2944 * G, "fp16": 2944 * G, "int8": 11776 * G},
    mem_bandwidth_bytes_per_s=204.8 * G,
    onchip_bytes=60 * 1024 * 1024,
    sources={
        "fp32": "40 cores x 2.3 GHz x 2 AVX-512 FMA units x 16 fp32 lanes",
        "fp16": "no AVX-512 fp16 on Ice Lake: the fp32 rate",
        "int8": "AVX-512 VNNI (VPDPBUSD): 4x the fp32 MAC rate",
        "bandwidth": "8 channels of DDR4-3200 x 8 bytes (Intel ARK)",
        "onchip": "60 MB L3 (Intel ARK)",
    },
))  # fmt: skip
register_device(DeviceProfile(
    name="h100",
    description="NVIDIA H100 SXM5 80 GB: dense tensor-core rates, HBM3",
    peak_macs_per_s={"fp32": 33.5e12, "tf32": 247.5e12, "fp16": 494.7e12, "int8": 989.5e12},
    mem_bandwidth_bytes_per_s=3.35e12,
    onchip_bytes=50 * 1024 * 1024,
    dram_bytes=80 * 1024**3,
    op_overhead_s=3e-6,
    sources={
        "fp32": "67 TFLOPS fp32 (non-tensor) (NVIDIA H100 datasheet)",
        "tf32": "495 TFLOPS tf32 tensor core, dense (datasheet's 989 is with sparsity)",
        "fp16": "989.4 TFLOPS fp16/bf16 tensor core, dense",
        "int8": "1,979 TOPS int8 tensor core, dense",
        "bandwidth": "3.35 TB/s HBM3 (datasheet)",
        "onchip": "50 MB L2 cache",
        "dram": "80 GB HBM3 (datasheet)",
        "op_overhead": "~3 us kernel launch, a commonly measured figure",
    },
))  # fmt: skip


def list_devices() -> list[str]:
    """Names of the known devices, ``host`` included."""
    return sorted([*_DEVICES, "host"])


def get_device(name: str | DeviceProfile) -> DeviceProfile:
    """A device by name; ``"host"`` is this machine, calibrated by a short micro-benchmark on first use."""
    if isinstance(name, DeviceProfile):
        return name
    if name == "host":
        from deepslim.analysis.calibrate import host_device

        return host_device()
    try:
        return _DEVICES[name]
    except KeyError:
        raise UnknownNameError("device", name, list_devices()) from None
