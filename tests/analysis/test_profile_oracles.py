"""Profiler parts against hand-worked answers: peak memory by liveness on small schedules (inputs freed after their
last read, outputs kept, a buffer written twice), and exact MACs of layers with non-default arguments (groups,
stride, dilation, batched matmul) next to PyTorch's FLOP counter."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deepslim as ds
from deepslim.analysis._liveness import Step, peak_live_bytes


def test_a_chain_frees_each_buffer_after_its_last_read():
    # x(100) -> a(10) -> b(1000) -> y(1); x is dead once a is written, a once b is
    steps = [Step({"x"}, {"a": 10}), Step({"a"}, {"b": 1000}), Step({"b"}, {"y": 1})]
    assert peak_live_bytes(steps, {"x": 100}, ["y"]) == 1010
    assert peak_live_bytes(steps[:1], {"x": 100}, ["a"]) == 110


def test_an_input_read_late_stays_alive_until_then():
    # the skip connection: x is read again by the last step, so it lives beside a and b (a is read by step 2)
    steps = [Step({"x"}, {"a": 10}), Step({"a"}, {"b": 1000}), Step({"b", "x"}, {"y": 1})]
    assert peak_live_bytes(steps, {"x": 100}, ["y"]) == 100 + 10 + 1000


def test_outputs_live_to_the_end_and_unread_writes_occupy_their_step():
    steps = [Step(set(), {"big": 500}), Step(set(), {"small": 5}), Step({"small"}, {"z": 7})]
    assert peak_live_bytes(steps, {}, []) == 500 + 0  # big dies right after its step: 500 alone at step 1
    assert peak_live_bytes(steps, {}, ["big"]) == 500 + 5 + 7  # kept as an output: alive beside everything after
    assert peak_live_bytes([], {"x": 42}, ["x"]) == 42 and peak_live_bytes([], {}, []) == 0


def test_a_buffer_written_again_keeps_its_first_size_and_lives_to_its_last_write():
    steps = [Step(set(), {"buf": 64}), Step(set(), {"other": 8}), Step(set(), {"buf": 9999})]
    assert peak_live_bytes(steps, {}, []) == 64 + 8  # buf lives through step 3 at 64 bytes; other dies after step 2
    assert peak_live_bytes(steps[:2] + [Step({"ghost"}, {})], {}, ["ghost"]) == 64  # unknown reads change nothing



def test_an_input_nobody_reads_is_alive_before_the_first_step_only():
    steps = [Step(set(), {"a": 1}), Step({"a"}, {"b": 2})]
    assert peak_live_bytes(steps, {"x": 100}, []) == 100  # not 101: x is dead once step 1 runs
    assert peak_live_bytes(steps, {"x": 100}, ["x"]) == 100 + 1 + 2  # an output: alive to the end

def _flop_counter_macs(module, x):
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("module", "x", "macs"),
    [
        (nn.Conv2d(4, 6, 3, groups=2), torch.randn(1, 4, 8, 8), 6 * 36 * 2 * 9),  # 2 input channels per group
        (nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9), 2 * 5 * 25 * 3 * 9),
        (nn.Conv2d(2, 2, 3, dilation=2), torch.randn(1, 2, 9, 9), 2 * 25 * 2 * 9),
        (nn.Conv1d(4, 8, 5), torch.randn(3, 4, 20), 3 * 8 * 16 * 4 * 5),
        (nn.Linear(6, 7), torch.randn(2, 3, 6), 2 * 3 * 6 * 7),  # a 3-D input: every position
        (nn.ConvTranspose2d(3, 4, 2, stride=2), torch.randn(1, 3, 5, 5), 3 * 4 * 4 * 25),
    ],
)
def test_macs_of_layers_with_non_default_arguments(module, x, macs):
    prof = ds.profile(module.eval(), x)
    assert prof.macs == macs == _flop_counter_macs(module, x)


class _Batched(nn.Module):
    def forward(self, x):  # (B, N, D) @ (B, D, N) -> (B, N, N), then (B, N, N) @ (B, N, D)
        scores = torch.bmm(x, x.transpose(1, 2))
        return torch.matmul(scores, x)


def test_batched_matmuls_count_every_batch():
    x = torch.randn(3, 5, 4)
    prof = ds.profile(_Batched(), x)
    assert prof.macs == 3 * 5 * 4 * 5 + 3 * 5 * 5 * 4 == _flop_counter_macs(_Batched(), x)


def test_depthwise_macs_are_counted_only_for_one_channel_per_group():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 1))
    prof = ds.profile(model.eval(), torch.randn(1, 4, 10, 10))
    depthwise = {lp.name: lp.depthwise_macs for lp in prof.layers}
    assert depthwise == {"0": 4 * 64 * 9, "1": 0, "2": 0}
    assert prof.layer("0").macs == 4 * 64 * 9 and prof.layer("1").macs == 8 * 36 * 2 * 9
