"""The dependency graph's operator rules, one operator at a time between a convolution and a linear head: the
operators that keep the channels apart let the dead channels go (exactly the four of them, the output unchanged),
and the ones that would mix, split or select them leave the group whole, naming the operator and why."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds

PRUNABLE = {
    "slice over space": lambda y: y[:, :, 1:],
    "select over space": lambda y: y[:, :, 0],
    "cat along channels": lambda y: torch.cat([y, y], 1),
    "cat along space": lambda y: torch.cat([y, y * 2], 2),
    "sum over space": lambda y: y.sum(3),
    "amax by keyword": lambda y: torch.amax(y, dim=-1),
    "pad of space": lambda y: F.pad(y, (1, 1)),
    "flatten after channels": lambda y: y.flatten(2),
    "max pooling": lambda y: F.max_pool2d(y, 2),
}

BLOCKED = {
    "reshape method": (lambda y: y.reshape(2, 8, 36), "reshape (reshape) may mix channels"),
    "view method": (lambda y: y.view(2, 4, 2, 36), "view (view) may mix channels"),
    "transpose then flatten": (lambda y: y.transpose(1, 3), "flatten flattens channels inside another dimension"),
    "permute then flatten": (lambda y: y.permute(0, 2, 3, 1), "flatten flattens channels inside another dimension"),
    "slice of channels": (lambda y: y[:, 2:], "getitem selects channels"),
    "mean over channels": (lambda y: y.mean(1), "mean reduces over channels"),
    "pad of channels": (lambda y: F.pad(y, (0, 0, 0, 0, 1, 1)), "pad (pad) may mix channels"),
    "flatten of batch and channels": (lambda y: y.flatten(0, 1), "flatten flattens channels inside another dimension"),
    "pooling over channels": (lambda y: F.avg_pool1d(y.flatten(2).transpose(1, 2), 2),
                              "avg_pool1d (avg_pool1d) may mix channels"),
    "chunk of channels": (lambda y: torch.chunk(y, 2, dim=1)[0], "channels split by chunk"),
    "softmax over channels": (lambda y: torch.softmax(y, 1), "softmax (softmax) may mix channels"),
    "matmul": (lambda y: y @ torch.ones(6, 3), "matmul (matmul) may mix channels"),
    "a constant of other width": (lambda y: y + torch.arange(6.0),
                                  "add combines tensors whose channels do not line up"),
}  # fmt: skip


class _Between(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(op(torch.zeros(2, 8, 6, 6)).flatten(1).shape[1], 2)

    def forward(self, x):
        return self.fc(self.op(F.relu(self.a(x))).flatten(1))


def _dead_model(op, cls=None):
    torch.manual_seed(0)
    model = (cls or _Between)(op).eval()
    with torch.no_grad():  # channels 1, 3, 4, 6 dead: removing them changes nothing downstream
        model.a.weight[[1, 3, 4, 6]] = 0.0
        model.a.bias[[1, 3, 4, 6]] = 0.0
    return model


@pytest.mark.parametrize("case", list(PRUNABLE))
def test_operators_that_keep_channels_apart_let_exactly_the_dead_channels_go(case):
    model, x = _dead_model(PRUNABLE[case]), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert [g.kept for g in result.groups if g.width == 8] == [(0, 2, 5, 7)]
    assert model.a.out_channels == 4
    assert result.blocked == ("fc out (2 channels; not prunable: reaches the model output)",)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", list(BLOCKED))
def test_operators_that_mix_split_or_select_channels_leave_them_whole_naming_why(case):
    op, why = BLOCKED[case]
    model, x = _dead_model(op), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert result.blocked == (f"a out (8 channels; not prunable: {why})",
                              "fc out (2 channels; not prunable: reaches the model output)")  # fmt: skip
    assert model.a.out_channels == 8 and torch.equal(model(x), before)


class _Exported(_Between):
    """The same model that torch.fx cannot trace (len of a proxy): the graph comes from torch.export (ATen ops)."""

    def forward(self, x):
        assert len(x) > 0
        return super().forward(x)


EXPORT_PRUNABLE = {**PRUNABLE, "unsqueeze": lambda y: y.unsqueeze(2), "squeeze": lambda y: y[:, :, :1].squeeze(2)}
EXPORT_BLOCKED = {
    "view splitting channels": (lambda y: y.view(2, 4, 2, 36), "view (view) splits or mixes channels"),
    "transpose then flatten": (lambda y: y.transpose(1, 3), "flatten (flatten) splits or mixes channels"),
    "slice of channels": (lambda y: y[:, 2:], "slice_1 slices channels"),
    "mean over channels": (lambda y: y.mean(1), "mean reduces over channels"),
    "pad of channels": (lambda y: F.pad(y, (0, 0, 0, 0, 1, 1)), "pad (pad.default) may mix channels"),
    "pooling over channels": (lambda y: F.avg_pool1d(y.flatten(2).transpose(1, 2), 2),
                              "avg_pool1d pools over channels"),
    "chunk of channels": (lambda y: torch.chunk(y, 2, dim=1)[0], "channels split by chunk"),
    "softmax over channels": (lambda y: torch.softmax(y, 1), "softmax (softmax.int) may mix channels"),
}  # fmt: skip


def _exported(op):
    return _dead_model(op, _Exported)


@pytest.mark.parametrize("case", list(EXPORT_PRUNABLE))
def test_aten_operators_that_keep_channels_apart_let_exactly_the_dead_channels_go(case):
    model, x = _exported(EXPORT_PRUNABLE[case]), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert result.capture == "torch.export"
    assert [g.kept for g in result.groups if g.width == 8] == [(0, 2, 5, 7)] and model.a.out_channels == 4
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", list(EXPORT_BLOCKED))
def test_aten_operators_that_mix_split_or_select_channels_leave_them_whole_naming_why(case):
    op, why = EXPORT_BLOCKED[case]
    model, x = _exported(op), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert result.capture == "torch.export"
    assert result.blocked[0] == f"a out (8 channels; not prunable: {why})"
    assert model.a.out_channels == 8 and torch.equal(model(x), before)


@pytest.mark.parametrize("drop_batch", [lambda y: y[0], lambda y: y.mean(0), lambda y: torch.sum(y, dim=(0,))],
                         ids=["first sample", "mean over the batch", "sum over the batch"])
def test_an_integer_index_or_reduction_before_the_channels_moves_them_one_dimension_down_and_they_still_prune(
        drop_batch):  # fmt: skip
    class FirstSample(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 36, 2)

        def forward(self, x):
            return self.fc(drop_batch(F.relu(self.a(x))).flatten())  # (8, 6, 6): channels at dim 0

    torch.manual_seed(0)
    model, x = FirstSample().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.a.weight[[1, 3, 4, 6]] = 0.0
        model.a.bias[[1, 3, 4, 6]] = 0.0
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert [g.kept for g in result.groups if g.width == 8] == [(0, 2, 5, 7)] and model.fc.in_features == 4 * 36
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
