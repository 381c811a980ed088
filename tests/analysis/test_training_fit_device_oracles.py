"""TrainingProfile.with_device: whether a planned training step fits a device's on-chip memory and its DRAM, at
the exact boundary (a peak equal to the size fits), and None where the device gives no DRAM size."""

import dataclasses

import pytest
import torch

from deepslim.analysis.devices import get_device
from deepslim.analysis.training import training_profile


@pytest.fixture(scope="module")
def profile():
    torch.manual_seed(0)
    return training_profile(torch.nn.Sequential(torch.nn.Linear(8, 4)), torch.randn(2, 8), trainable="all")


@pytest.mark.parametrize(("onchip", "dram", "fits"), [
    (0, None, (False, None)), ("peak", None, (True, None)), ("peak-1", "peak", (False, True)),
    ("peak-1", "peak-1", (False, False)), ("peak", 10**12, (True, True)),
])  # fmt: skip
def test_a_step_fits_memory_when_its_peak_is_at_most_the_size(profile, onchip, dram, fits):
    peak = profile.peak_bytes
    size = {"peak": peak, "peak-1": peak - 1}
    dev = dataclasses.replace(get_device("rpi4"), name="board", onchip_bytes=size.get(onchip, onchip),
                              dram_bytes=size.get(dram, dram))  # fmt: skip
    placed = profile.with_device(dev)
    assert (placed.fits_sram, placed.fits_dram) == fits
    assert placed.device == "board" and placed.peak_bytes == peak


def test_named_devices_read_their_own_dram_and_sram_sizes(profile):
    rpi = profile.with_device("rpi4")
    assert (rpi.device, rpi.fits_dram) == ("rpi4", True)  # 4 GiB
    m7 = profile.with_device("cortex-m7")
    assert m7.fits_dram is (None if get_device("cortex-m7").dram_bytes is None else True)
    assert m7.fits_sram is (profile.peak_bytes <= get_device("cortex-m7").onchip_bytes)
