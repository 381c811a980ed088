"""The dependency graph's operator rules where the zoo does not reach them: a reduction's keepdim given by keyword,
advanced indexing and rank-changing broadcasts (each blocks its group, saying why, instead of failing), the refusal of
a node no rule foresaw, and the plan of a group left whole after its removal broke the model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from deepslim.compress.prune import _rules, channel
from deepslim.models.adapters import LayerKind, register_layer_kind, unregister_layer_kind
from tests.compress.test_channel_hf import Dense  # stores its weight (in, out), reshapes by a width of its own


class Gated(nn.Module):
    """Squeeze-and-excitation style gating: the channel means (keepdim) scale the channels they came from."""

    def __init__(self, keyword: bool):
        super().__init__()
        self.keyword = keyword
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        s = y.mean(dim=(2, 3), keepdim=True) if self.keyword else torch.mean(y, (2, 3), True)
        return self.c(y * torch.sigmoid(s)).mean((2, 3))


@pytest.mark.parametrize("keyword", [True, False], ids=["keepdim-keyword", "keepdim-positional"])
def test_a_keepdim_reduction_keeps_the_channels_it_gates_prunable_and_exact(keyword):
    model, x = Gated(keyword).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # channels 1, 3, 4, 6 dead (weights and bias zero): removing them must change nothing
        model.a.weight[[1, 3, 4, 6]] = 0.0
        model.a.bias[[1, 3, 4, 6]] = 0.0
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert [g.kept for g in result.groups if g.width == 8] == [(0, 2, 5, 7)]
    assert model.a.out_channels == 4 and model.c.in_channels == 4
    assert result.blocked == ("c out (4 channels; not prunable: reaches the model output)",)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


class Indexed(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index
        self.a, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 6, 2)

    def forward(self, x):
        return self.fc(F.relu(self.a(x))[self.index].flatten(1))


@pytest.mark.parametrize("index", [(Ellipsis, 0), (slice(None), slice(None), None, 0)], ids=["ellipsis", "none"])
def test_advanced_indexing_leaves_its_channels_whole_and_says_why(index):
    model, x = Indexed(index).eval(), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert model.a.out_channels == 8 and torch.equal(model(x), before)
    assert any(b.startswith("a out") and b.endswith("not prunable: getitem uses advanced indexing)")
               for b in result.blocked), result.blocked  # fmt: skip


class Broadcast(nn.Module):
    """A feature vector broadcast against a (3, 1, 1) buffer into a higher rank."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.register_buffer("offsets", torch.arange(3.0).reshape(3, 1, 1))

    def forward(self, x):
        return self.head(F.relu(self.fc(x) + self.offsets).sum(0))


def test_a_broadcast_the_graph_cannot_line_up_leaves_the_channels_whole_and_the_model_unchanged():
    model, x = Broadcast().eval(), torch.randn(2, 4)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert model.fc.out_features == 8 and torch.equal(model(x), before)
    assert any(b.startswith("fc out") and "channels do not line up" in b for b in result.blocked), result.blocked


class Scaled(nn.Module):
    """A per-channel constant scale stored as (C, 1, 1) or (1, C, 1, 1), as many NCHW models keep one."""

    def __init__(self, shape):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 8).reshape(shape))

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)) * self.gain))).mean((2, 3))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)], ids=["c11", "1c11"])
def test_a_per_channel_constant_keeps_its_channels_whole_and_the_other_groups_are_pruned(shape):
    """Before the fix the constant's channels were read along its last (size-1) dimension: the scale looked like a
    per-sample scalar, its group was pruned, the model broke, and prune_ refused it
    ("The size of tensor a (4) must match the size of tensor b (8) at non-singleton dimension 1")."""
    model, x = Scaled(shape).eval(), torch.randn(2, 3, 6, 6)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert "a out ⇒ b in (8 channels; not prunable: used as a tensor constant)" in result.blocked
    assert model.a.out_channels == 8 and model.b.out_channels == 4 and model.c.in_channels == 4
    assert result.skipped == () and model(x).shape == (2, 4)


class _Recorder(_rules.OpRules):
    """The rules alone: ``opaque`` records its reason (the builder would block the inputs with it)."""

    def __init__(self):
        self.reasons = []

    def opaque(self, node, why):
        self.reasons.append(why)
        return None


def _traced_node(fn, *args):
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    gm = fx.symbolic_trace(fn)
    ShapeProp(gm).propagate(*args)
    return next(n for n in gm.graph.nodes if n.op == "call_function")


def test_a_single_channel_input_whose_rank_a_broadcast_changes_is_opaque_with_that_reason():
    rules, layout = _Recorder(), _rules.Layout(1, 2, ((0, 8),))
    grown = _traced_node(lambda y, o: y + o, torch.randn(2, 8), torch.randn(3, 1, 1))
    assert rules._binary(grown, [layout]) is None and rules.reasons == ["broadcast changes the rank"]
    same = _traced_node(lambda y: y * 2.0, torch.randn(2, 8))
    assert rules._binary(same, [layout]) is layout and rules.reasons == ["broadcast changes the rank"]


def test_a_node_no_rule_foresaw_is_refused_naming_it_the_capture_and_the_way_out(monkeypatch):
    def unforeseen(self, node, src):
        raise ValueError("an operator nobody described")

    monkeypatch.setattr(_rules.OpRules, "_reduce", unforeseen)
    model = Gated(keyword=True)
    with pytest.raises(ds.UnsupportedModelError) as err:
        ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), torch.randn(2, 3, 6, 6))
    assert str(err.value) == (
        "the dependency graph cannot follow mean (mean) of the torch.fx graph: an operator nobody described; add the "
        "layers around it to ignore=(...) or prune with MagnitudePruneConfig"
    )
    assert model.a.out_channels == 8  # refused before anything was removed


def test_the_plan_of_a_group_left_whole_after_it_broke_the_model_says_whole():
    register_layer_kind(Dense, LayerKind(name="dense", out_dim=1, in_dim=0, per_channel=()))
    try:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), Dense(6, 8), nn.ReLU(),
                              nn.Linear(8, 3))  # fmt: skip
        x = torch.randn(2, 4)
        result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
        plans = {g.owners: g for g in result.groups}
        assert model[4].weight.shape == (3, 8) and model[6].in_features == 8  # its outputs stayed, its inputs went
        assert plans[("4",)].keep == plans[("4",)].width == 8 and plans[("4",)].kept == tuple(range(8))
        assert plans[("0",)].keep == 4 and plans[("2",)].keep == 3  # the healthy groups' plans as removed
        assert model[0].out_features == 4 and model[2].out_features == 3
        assert any(s.startswith("4 out") and "broke the model" in s for s in result.skipped)
    finally:
        unregister_layer_kind(Dense)


def test_plan_in_matches_a_plan_by_the_group_of_its_owners_only():
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)), torch.randn(2, 4)
    (graph, keep), result = channel._plan(model, ds.ChannelPruneConfig(ratio=0.5), x, None)
    first = graph.spaces[graph.producer_space["0"]].find().id
    second = graph.spaces[graph.producer_space["2"]].find().id
    by_owner = {g.owners: g for g in result.groups}
    assert channel._plan_in(by_owner[("0",)], graph, {first: "x"})
    assert not channel._plan_in(by_owner[("0",)], graph, {second: "x"})
    assert channel._plan_in(by_owner[("2",)], graph, {second: "x"})
    assert not channel._plan_in(channel.GroupPlan("no owner", 8, 8, "channels", owners=("nowhere",)), graph,
                                {first: "x", second: "x"})  # fmt: skip


class MethodFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))  # the method, not torch.flatten


def test_a_flatten_method_maps_each_channel_to_its_block_of_features_exactly():
    model, x = MethodFlatten().eval(), torch.randn(2, 1, 4, 4)
    with torch.no_grad():  # channels 0 and 3 dead: their 16-feature blocks read nothing
        model.conv.weight[[0, 3]] = 0.0
        model.conv.bias[[0, 3]] = 0.0
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert [g.kept for g in result.groups] == [(1, 2)]
    assert model.conv.out_channels == 2 and model.fc.in_features == 32
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_the_channel_technique_lists_each_groups_first_layer_and_needs_an_example():
    from deepslim.compress import techniques

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    assert techniques._channel_groups(model, ds.ChannelPruneConfig(ratio=0.5), torch.randn(2, 4)) == ["0", "2"]
    with pytest.raises(ds.ConfigError) as err:
        techniques._channel_groups(model, ds.ChannelPruneConfig(ratio=0.5))
    assert str(err.value) == "channel pruning needs example_input to find its groups"


class Summed(nn.Module):
    """A reduction over every dimension (no dim argument) of a layer's output, added to the logits."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.fc(self.b(y).mean((2, 3))) + y.sum()


def test_a_reduction_over_all_dimensions_leaves_its_channels_whole_and_says_why():
    model, x = Summed().eval(), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert model.a.out_channels == 8 and model.b.out_channels == 4  # only the summed group is kept whole
    assert any(b.startswith("a out") and b.endswith("not prunable: reduction over all dimensions)")
               for b in result.blocked), result.blocked  # fmt: skip
    assert model(x).shape == before.shape
