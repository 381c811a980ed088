"""More operators between a convolution and a linear head, under torch.fx and under torch.export (the same table as
test_rules_ops_table_oracles.py): those that keep the channels apart let exactly the four dead channels go with the
output unchanged; those that mix, select, split or return several tensors leave the group whole, naming why.

An operator returning several tensors (``max``/``min``/``sort``/``topk`` over a dimension: values and indices) used to
cut the channels' dependency silently: the convolution was pruned, the head was not, and the model broke (caught
only by the final check, which then refused the whole model)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from tests.compress.test_rules_ops_table_oracles import _dead_model, _Exported

PRUNABLE = {
    "permute keeping channels": lambda y: y.permute(0, 1, 3, 2),
    "transpose of space": lambda y: y.transpose(2, 3),
    "torch.transpose of space": lambda y: torch.transpose(y, -1, -2),
    "torch.permute keeping channels": lambda y: torch.permute(y, (0, 1, 3, 2)),
    "product with itself": lambda y: y * y,
    "interpolate": lambda y: F.interpolate(y, scale_factor=2.0),
    "adaptive pooling": lambda y: F.adaptive_avg_pool2d(y, 1),
    "clamp": lambda y: y.clamp(0, 1),
    "mean keepdim over space": lambda y: y.mean((2, 3), keepdim=True),
    "strided slice": lambda y: y[:, :, ::2],
    "pad with keyword": lambda y: F.pad(y, pad=(1, 1)),
    "pad of two dims": lambda y: F.pad(y, (1, 1, 2, 0)),
    "negative dim sum": lambda y: y.sum(-2),
    "flatten with negative end": lambda y: y.flatten(2, -1),
}

BLOCKED_BOTH = {
    "max over space, values": (lambda y: y.max(dim=2).values, "max_1 returns several tensors"),
    "max over space, first": (lambda y: y.max(2)[0], "max_1 returns several tensors"),
    "topk": (lambda y: y.topk(2, dim=3)[0], "topk returns several tensors"),
    "sort": (lambda y: torch.sort(y, dim=2)[0], "sort returns several tensors"),
    "unbind over space": (lambda y: y.unbind(2)[0], "channels split by unbind"),
    "split over space": (lambda y: y.split(3, dim=3)[0], "channels split by split"),
    "sum over channels": (lambda y: y.sum(1), "sum_1 reduces over channels"),
    "sum over channels keepdim": (lambda y: y.sum(1, keepdim=True), "sum_1 reduces over channels"),
    "amax over channels": (lambda y: y.amax(1), "amax reduces over channels"),
}  # fmt: skip

BLOCKED_FX = {
    "movedim": (lambda y: y.movedim(3, 2), "movedim (movedim) may mix channels"),
    "view keeping channels": (lambda y: y.view(2, 8, 36), "view (view) may mix channels"),
    "narrow": (lambda y: torch.narrow(y, 2, 0, 3), "narrow (narrow) may mix channels"),
    "ellipsis index": (lambda y: y[..., 1], "getitem uses advanced indexing"),
    "new axis": (lambda y: y[:, None], "getitem uses advanced indexing"),
    "select method": (lambda y: y.select(3, 0), "select (select) may mix channels"),
    "repeat": (lambda y: y.repeat(1, 2, 1, 1), "repeat (repeat) may mix channels"),
    "roll of channels": (lambda y: y.roll(1, 1), "roll (roll) may mix channels"),
    "flip of channels": (lambda y: y.flip(1), "flip (flip) may mix channels"),
    "normalize over channels": (lambda y: F.normalize(y, dim=1), "normalize (normalize) may mix channels"),
    "std": (lambda y: y.std(3), "std (std) may mix channels"),
}  # fmt: skip

PRUNABLE_EXPORT = {"reshape keeping channels": lambda y: y.reshape(2, 8, -1), "ellipsis index": lambda y: y[..., 1],
                   "select method": lambda y: y.select(3, 0), "new axis": lambda y: y[:, None]}  # fmt: skip


def _prune(op, cls=None):
    model, x = _dead_model(op, cls), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    return model, x, before, result


def _check_pruned(model, x, before, result):
    assert [g.kept for g in result.groups if g.width == 8] == [(0, 2, 5, 7)] and model.a.out_channels == 4
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", list(PRUNABLE))
@pytest.mark.parametrize("cls", [None, _Exported], ids=["fx", "export"])
def test_operators_that_keep_channels_apart_prune_exactly_the_dead_channels(case, cls):
    _check_pruned(*_prune(PRUNABLE[case], cls))


@pytest.mark.parametrize("case", list(PRUNABLE_EXPORT))
def test_aten_views_and_selections_outside_the_channels_prune_them(case):
    model, x, before, result = _prune(PRUNABLE_EXPORT[case], _Exported)
    assert result.capture == "torch.export"
    _check_pruned(model, x, before, result)


@pytest.mark.parametrize("case", [*BLOCKED_BOTH, *BLOCKED_FX])
def test_operators_that_mix_select_split_or_return_several_tensors_leave_the_group_whole(case):
    op, why = {**BLOCKED_BOTH, **BLOCKED_FX}[case]
    model, x, before, result = _prune(op)
    assert result.blocked[0] == f"a out (8 channels; not prunable: {why})"
    assert model.a.out_channels == 8 and torch.equal(model(x), before)


@pytest.mark.parametrize("case", list(BLOCKED_BOTH))
def test_aten_operators_that_return_several_tensors_or_reduce_channels_leave_the_group_whole(case):
    op, why = BLOCKED_BOTH[case]
    model, x, before, result = _prune(op, _Exported)
    assert result.capture == "torch.export" and result.blocked[0] == f"a out (8 channels; not prunable: {why})"
    assert model.a.out_channels == 8 and torch.equal(model(x), before)


class _TwoBranches(nn.Module):
    """A global max over space in one branch, an ordinary convolution pair in the other."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8 + 4 * 36, 2)

    def forward(self, x):
        pooled = torch.max(F.relu(self.a(x)).flatten(2), dim=2)[0]
        return self.fc(torch.cat([pooled, self.c(F.relu(self.b(x))).flatten(1)], 1))


def test_a_max_over_space_leaves_its_group_whole_and_the_rest_of_the_model_prunes():
    torch.manual_seed(0)
    model, x = _TwoBranches().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        for conv in (model.a, model.b):
            conv.weight[[1, 3, 4, 6]] = 0.0
            conv.bias[[1, 3, 4, 6]] = 0.0
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert model.a.out_channels == 8 and model.b.out_channels == 4 and model.c.in_channels == 4
    assert result.blocked[0] == "a out (8 channels; not prunable: max_1 returns several tensors)"
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
