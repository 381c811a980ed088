"""Golden texts of the profile's summary, its unknown-operator refusal and warning, and the training profile's
refusal of an unknown optimizer: what a user reads, word for word (a substring match lets a changed number or name
through)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.analysis import summary_lines


class _Inverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x)


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Inverse()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


UNKNOWN = "aten.linalg_inv_ex (in {0}), aten._linalg_check_errors (in {0})"


def test_the_summary_of_lenet300_on_a_raspberry_pi_reads_word_for_word():
    prof = ds.profile("lenet300", device="rpi4")
    assert summary_lines(prof) == [
        "model lenet300  input 1x784",
        "params 266,610  MACs 266,200 (266K)  other ops 400",
        "weights 1.02 MiB  activations written 3.16 KiB  peak activation memory 4.23 KiB  intensity 0.2 MAC/B",
        "on rpi4: latency 0.084 ms (roofline estimate, 100% in memory-bound layers)  energy 173.2 uJ (compute 1.2, "
        "on-chip 1.3, off-chip 170.6)",
        "fits on chip (1.00 MiB): weights no, peak activations yes",
    ]


def test_an_unknown_operator_in_a_submodule_is_named_with_its_layer_in_the_refusal_and_the_warning():
    x = torch.eye(3)[None] * 2
    with pytest.raises(ds.UnsupportedOpError) as err:
        ds.profile(_Outer(), x)
    assert str(err.value) == (f"cannot count operator {UNKNOWN.format('body')}; pass strict=False (CLI: "
                              "--allow-unknown-ops) to count it as zero MACs")  # fmt: skip
    prof = ds.profile(_Outer(), x, strict=False)
    assert prof.warnings == (f"counted as zero MACs: {UNKNOWN.format('body')}",)
    assert prof.macs == 27 and prof.params == 12  # the linear layer alone
    assert summary_lines(prof) == [
        "model _Outer  input 1x3x3",
        "params 12  MACs 27 (27)  other ops 9",
        "weights 48 B  activations written 112 B  peak activation memory 76 B  intensity 0.1 MAC/B",
        f"warning: counted as zero MACs: {UNKNOWN.format('body')}",
    ]


def test_an_unknown_operator_of_the_model_itself_is_said_to_be_in_the_model():
    x = torch.eye(3)[None] * 2
    with pytest.raises(ds.UnsupportedOpError) as err:
        ds.profile(_Inverse(), x)
    assert str(err.value).startswith(f"cannot count operator {UNKNOWN.format('(model)')}; pass strict=False")
    assert ds.profile(_Inverse(), x, strict=False).warnings == (
        f"counted as zero MACs: {UNKNOWN.format('(model)')}",)


def test_an_unknown_optimizer_is_refused_with_the_known_ones_listed():
    model = nn.Linear(4, 2)
    with pytest.raises(ds.ConfigError) as err:
        ds.training_profile(model, torch.randn(2, 4), optimizer="lbfgs")
    assert str(err.value) == "unknown optimizer 'lbfgs'; use one of sgd, sgd-momentum, adam"
