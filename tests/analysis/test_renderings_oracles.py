"""Golden renderings of the profiles a user reads and the records a program reads: the per-layer table and summary
of ``print(profile)``, ``Profile.to_dict()``, and the training-memory table, summary and record (frozen, trainable,
"(model)", truncated names, layers without a stock rule, unknown operators)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds

LENET300_TABLE = """\
layer  type    output  params  MACs     weights   act out  MAC/B  latency ms   bound  energy uJ
-----  ------  ------  ------  ----  ----------  --------  -----  ----------  ------  ---------
fc1    Linear  1x300     236K  235K  919.92 KiB  1.17 KiB    0.2       0.074  memory     152.98
relu   ReLU    1x300        0     0         0 B  1.56 KiB    0.0       0.000  memory       0.00
fc2    Linear  1x100    30.1K   30K  117.58 KiB     400 B    0.2       0.010  memory      19.55
fc3    Linear  1x10     1.01K    1K    3.95 KiB      40 B    0.2       0.000  memory       0.66

model lenet300  input 1x784
params 266,610  MACs 266,200 (266K)  other ops 400
weights 1.02 MiB  activations written 3.16 KiB  peak activation memory 4.23 KiB  intensity 0.2 MAC/B
on rpi4: latency 0.084 ms (roofline estimate, 100% in memory-bound layers)  energy 173.2 uJ (compute 1.2, on-chip 1.3, \
off-chip 170.6)
fits on chip (1.00 MiB): weights no, peak activations yes"""


def test_the_printed_profile_of_lenet300_on_a_raspberry_pi_is_golden():
    assert str(ds.profile("lenet300", device="rpi4")) == LENET300_TABLE


def test_the_profile_record_holds_every_total_each_layer_and_the_estimate():
    d = ds.profile("lenet300", device="rpi4").to_dict()
    top = {k: v for k, v in d.items() if k not in ("layers", "cost")}
    assert top == {"model": "lenet300", "source": "pytorch", "input_shapes": [[1, 784]], "params": 266610,
                   "nonzero_params": 266610, "weight_bytes": 1066440, "macs": 266200, "other_ops": 400,
                   "activation_bytes": 3240, "peak_activation_bytes": 4336, "bytes_moved": 1076016,
                   "arithmetic_intensity": pytest.approx(266200 / 1076016), "warnings": []}  # fmt: skip
    assert [layer["name"] for layer in d["layers"]] == ["fc1", "relu", "fc2", "fc3"]
    assert d["layers"][1] == {"name": "relu", "type": "ReLU", "calls": 2, "params": 0, "nonzero_params": 0,
                              "weight_bytes": 0, "macs": 0, "other_ops": 400, "input_bytes": 1600,
                              "output_bytes": 1600, "output_shape": [1, 300], "dtype": "fp32", "depthwise_macs": 0,
                              "bytes_moved": 3200, "arithmetic_intensity": 0.0}  # fmt: skip
    assert d["layers"][0] == {"name": "fc1", "type": "Linear", "calls": 1, "params": 235500,
                              "nonzero_params": 235500, "weight_bytes": 942000, "macs": 235200, "other_ops": 0,
                              "input_bytes": 3136, "output_bytes": 1200, "output_shape": [1, 300], "dtype": "fp32",
                              "depthwise_macs": 0, "bytes_moved": 946336,
                              "arithmetic_intensity": pytest.approx(235200 / 946336)}  # fmt: skip
    cost = {k: v for k, v in d["cost"].items() if k not in ("layers", "device")}
    assert cost == {"latency_ms": pytest.approx(0.08406375), "energy_uj": pytest.approx(173.2003),
                    "energy_compute_uj": pytest.approx(1.22488), "energy_onchip_uj": pytest.approx(1.34502),
                    "energy_offchip_uj": pytest.approx(170.6304), "memory_bound_fraction": 1.0,
                    "weights_fit_on_chip": False, "activations_fit_on_chip": True}  # fmt: skip
    assert d["cost"]["device"]["name"] == "rpi4" and d["cost"]["device"]["onchip_bytes"] == 1 << 20
    assert d["cost"]["layers"][2] == {"name": "fc2", "compute_ms": pytest.approx(0.000625),
                                      "memory_ms": pytest.approx(0.00953125), "latency_ms": pytest.approx(0.00953125),
                                      "bound": "memory", "energy_compute_uj": pytest.approx(0.138),
                                      "energy_onchip_uj": pytest.approx(0.1525),
                                      "energy_offchip_uj": pytest.approx(19.264),
                                      "energy_uj": pytest.approx(19.5545)}  # fmt: skip


class _Inverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a_rather_long_feature_extractor_name = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.inv = _Inverse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a_rather_long_feature_extractor_name(x))).mean((2, 3))
        return self.inv(self.head(y).reshape(-1, 2, 2) + 3 * torch.eye(2))


HEADER = ("layer                     type                          frozen   trainable       grads       optim       "
          "saved         how")  # fmt: skip


def test_the_training_memory_of_the_last_layer_with_adam_on_a_device_reads_word_for_word():
    torch.manual_seed(0)
    tp = ds.training_profile(_Model(), torch.randn(2, 3, 6, 6), trainable="last", optimizer="adam", batch_size=4,
                             device="rpi4")  # fmt: skip
    assert str(tp).splitlines() == [
        HEADER,
        "a_rather_long_feature_ex  Conv2d                         896 B         0 B         0 B         0 B         "
        "0 B           -",
        "bn                        BatchNorm2d                     64 B         0 B         0 B         0 B         "
        "0 B           -",
        "head                      Linear                           0 B       144 B       144 B       288 B       "
        "128 B       stock",
        "inv                       _Inverse                         0 B         0 B         0 B         0 B       "
        "144 B       stock",
        "_Model (last, adam, batch 4): weights 1.08 KiB, grads 144 B, optimizer 288 B, saved 272 B, peak 16.55 KiB",
        "on rpi4: fits SRAM True, fits DRAM True",
        "operators without a rule (counted conservatively): linalg_inv_ex",
    ]
    assert tp.to_dict() == {
        "model": "_Model", "batch_size": 4, "trainable": "last", "optimizer": "adam", "weight_bytes": 1104,
        "trainable_bytes": 144, "grad_bytes": 144, "optimizer_bytes": 288, "saved_bytes": 272,
        "transient_bytes": 15136, "peak_bytes": 16944, "unknown_ops": ["linalg_inv_ex"],
        "stock_layers": ["head", "inv"], "device": "rpi4", "fits_sram": True, "fits_dram": True,
        "layers": [
            {"name": "a_rather_long_feature_extractor_name", "type": "Conv2d", "frozen_bytes": 896,
             "trainable_bytes": 0, "grad_bytes": 0, "optimizer_bytes": 0, "saved_bytes": 0, "efficient": False},
            {"name": "bn", "type": "BatchNorm2d", "frozen_bytes": 64, "trainable_bytes": 0, "grad_bytes": 0,
             "optimizer_bytes": 0, "saved_bytes": 0, "efficient": False},
            {"name": "head", "type": "Linear", "frozen_bytes": 0, "trainable_bytes": 144, "grad_bytes": 144,
             "optimizer_bytes": 288, "saved_bytes": 128, "efficient": False},
            {"name": "inv", "type": "_Inverse", "frozen_bytes": 0, "trainable_bytes": 0, "grad_bytes": 0,
             "optimizer_bytes": 0, "saved_bytes": 144, "efficient": False},
        ],
    }  # fmt: skip


def test_the_training_memory_of_two_chosen_tensors_with_sgd_reads_word_for_word():
    torch.manual_seed(0)
    tp = ds.training_profile(_Model(), torch.randn(2, 3, 6, 6), trainable={"bn.weight", "head.bias"},
                             optimizer="sgd")  # fmt: skip
    assert str(tp).splitlines() == [
        HEADER,
        "(model)                   _Model                           0 B         0 B         0 B         0 B    "
        "2.25 KiB       stock",
        "a_rather_long_feature_ex  Conv2d                         896 B         0 B         0 B         0 B         "
        "0 B           -",
        "bn                        BatchNorm2d                     32 B        32 B        32 B         0 B    "
        "2.31 KiB       stock",
        "head                      Linear                         128 B        16 B        16 B         0 B         "
        "0 B       stock",
        "inv                       _Inverse                         0 B         0 B         0 B         0 B        "
        "72 B       stock",
        "_Model (2 tensors, sgd, batch as given): weights 1.08 KiB, grads 48 B, optimizer 0 B, saved 4.63 KiB, peak "
        "11.00 KiB",
        "operators without a rule (counted conservatively): linalg_inv_ex",
    ]
