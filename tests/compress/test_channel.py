"""Structured pruning: golden hand-built graphs (exact channels removed, outputs unchanged), zoo conformance,
bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from deepslim.models.transformer import SelfAttention


def _kill(layer: nn.Module, rows: list[int], dim: int = 0) -> None:
    """Zero the given output rows (dim 0) or input columns (dim 1) of a layer, bias included for rows."""
    with torch.no_grad():
        layer.weight.index_fill_(dim, torch.tensor(rows), 0.0)
        if dim == 0 and getattr(layer, "bias", None) is not None:
            layer.bias[rows] = 0.0


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x1 = F.relu(self.a(x))
        return self.c(x1 + self.b(x1)).mean((2, 3))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1)).flatten(1)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1, self.dw, self.pw2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.pw2(F.relu(self.dw(F.relu(self.pw1(x))))).sum((2, 3))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(F.relu(self.g(F.relu(self.a(x))))).amax((2, 3))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.head = SelfAttention(8, 4, fused_qkv=False), nn.Linear(8, 3)

    def forward(self, x):
        return self.head((x + self.attn(x)).mean(1))


def _golden(model, x, config, expected_params):
    model.eval()
    before = model(x)
    result = ds.plan_channel_pruning(model, config, x)
    ds.prune_(model, config, example_input=x)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)  # only dead channels went
    assert sum(p.numel() for p in model.parameters()) == expected_params
    return result


def test_residual_group_removes_the_dead_channels_on_both_sides_of_the_add():
    m = Residual()
    dead = [1, 3, 5, 6]
    _kill(m.a, dead)
    _kill(m.b, dead)
    params = (3 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 4 + 4)
    result = _golden(m, torch.randn(2, 3, 6, 6), ds.ChannelPruneConfig(ratio=0.5), params)
    group = next(g for g in result.groups if "a out" in g.description)
    assert group.kept == (0, 2, 4, 7) and "b out" in group.description and "c in" in group.description


def test_concat_maps_each_branch_into_the_consumer():
    m = Concat()
    _kill(m.a, [0, 1])
    _kill(m.b, [1, 3, 5])
    _golden(m, torch.randn(2, 3, 4, 4), ds.ChannelPruneConfig(ratio=0.5), (3 * 2 + 2) + (3 * 3 + 3) + (5 * 5 + 5))
    assert m.c.in_channels == 5


def test_depthwise_conv_follows_its_channels():
    m = Depthwise()
    _kill(m.pw1, [0, 2, 4, 6])
    _kill(m.dw, [0, 2, 4, 6])
    _golden(m, torch.randn(1, 3, 5, 5), ds.ChannelPruneConfig(ratio=0.5), (3 * 4 + 4) + (4 * 9 + 4) + (4 * 4 + 4))
    assert m.dw.groups == m.dw.in_channels == m.dw.out_channels == 4


def test_grouped_conv_loses_channels_equally_per_group_and_blocks_its_input():
    m = Grouped()
    _kill(m.g, [0, 1, 4, 5])
    result = _golden(m, torch.randn(1, 3, 5, 5), ds.ChannelPruneConfig(ratio=0.5),
                     (3 * 8 + 8) + (4 * 4 * 9 + 4) + (4 * 4 + 4))  # fmt: skip
    assert m.g.groups == 2 and m.g.out_channels == 4 and m.a.out_channels == 8
    assert any("input of grouped convolution g" in b for b in result.blocked)


def test_flatten_to_linear_removes_whole_feature_blocks():
    m = FlattenLinear()
    _kill(m.conv, [1, 2])
    _golden(m, torch.randn(2, 1, 4, 4), ds.ChannelPruneConfig(ratio=0.5), (2 * 9 + 2) + (3 * 32 + 3))
    assert m.fc.in_features == 32


def test_attention_heads_are_removed_whole():
    m = Attention()
    for proj in (m.attn.query, m.attn.key, m.attn.value):
        _kill(proj, [2, 3, 6, 7])  # heads 1 and 3 (head_dim 2)
    _kill(m.attn.proj, [2, 3, 6, 7], dim=1)
    config = ds.ChannelPruneConfig(ratio=0.5, ignore=("attn.proj",))
    result = _golden(m, torch.randn(2, 5, 8), config, 3 * (8 * 4 + 4) + (4 * 8 + 8) + (8 * 3 + 3))
    assert m.attn.num_heads == 2 and next(g for g in result.groups if g.unit == "heads").kept == (0, 2)


def test_dependency_groups_print_what_goes_together():
    groups = ds.dependency_groups(ds.create_model("resnet18"), ds.example_input("resnet18"))
    assert any(g.startswith("conv1 out ⇒ bn1 ⇒ layer1.0.conv1 in") for g in groups)
    assert any("fc out" in g and "reaches the model output" in g for g in groups)


def test_bn_scale_and_taylor_importance_pick_channels():
    data = ds.load_data("digits")
    model = ds.create_model("lenet5", input_size=8)
    with torch.no_grad():
        model.features[0].weight[3] *= 100  # a dominant filter survives any sensible criterion
    for importance in ("l1", "l2", "taylor"):
        plan = ds.plan_channel_pruning(model, ds.ChannelPruneConfig(ratio=0.9, importance=importance),
                                       data.example_input, calib_data=data.calib)  # fmt: skip
        assert 3 in next(g for g in plan.groups if "features.0 out" in g.description).kept
    resnet = ds.create_model("resnet20")
    with torch.no_grad():
        resnet.layer1[0].bn1.weight.copy_(torch.arange(16.0))
    plan = ds.plan_channel_pruning(resnet, ds.ChannelPruneConfig(ratio=0.5, importance="bn_scale"),
                                   ds.example_input("resnet20"))  # fmt: skip
    assert next(g for g in plan.groups if "layer1.0.conv1 out" in g.description).kept == tuple(range(8, 16))


def test_l1_importance_scores_the_whole_group():
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(1, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.bn(self.conv(x))).mean((2, 3))

    m = ConvBN()
    with torch.no_grad():
        m.conv.weight.fill_(1.0)  # identical filters: only the batch norm's scale tells the channels apart
        m.bn.weight.copy_(torch.tensor([0.1, 5.0, 0.1, 5.0]))
        m.head.weight.fill_(1.0)
    plan = ds.plan_channel_pruning(m, ds.ChannelPruneConfig(ratio=0.5), torch.randn(1, 1, 2, 2))
    assert next(g for g in plan.groups if "conv out" in g.description).kept == (1, 3)


def test_overrides_ignore_and_round_to():
    x = ds.example_input("resnet20")
    config = ds.ChannelPruneConfig(ratio=0.5, round_to=4, overrides={"re:layer3\\..*": 0.25, "layer1.0.conv1": None})
    plan = ds.plan_channel_pruning(ds.create_model("resnet20"), config, x)
    keep = {g.owners[0]: g.keep for g in plan.groups}
    assert keep["layer1.0.conv1"] == 16 and keep["layer1.1.conv1"] == 8 and keep["layer3.0.conv1"] == 48
    assert all(k % 4 == 0 for k in keep.values())


# every zoo model, channel-pruned: runs, keeps its output shape, loses MACs and parameters, round-trips through a
# file (below 10 M parameters after pruning); one model of each graph pattern also exports to ONNX (the dynamo export
# is ~13 CPU-s a model, and the others repeat a pattern: flatten, residual, depthwise, channel shuffle + concat, fire
# concat, attention, text)
EXPORTED = {"lenet5", "resnet20", "mobilenet_v2", "shufflenet_v2", "squeezenet1_0", "vit_tiny", "bert_mini"}
ZOO = {
    "lenet300": {"in_features": 64}, "lenet5": {"input_size": 8}, "resnet20": {}, "resnet56": {},
    "vgg11_cifar": {}, "vgg16_cifar": {}, "vit_tiny": {}, "bert_mini": {"vocab_size": 1000, "seq_len": 16},
    "resnet18": {"small_input": True, "num_classes": 10, "input_size": 32},
    "resnet34": {"small_input": True, "num_classes": 10, "input_size": 32},
    "resnet50": {"small_input": True, "num_classes": 10, "input_size": 32},
    "mobilenet_v1": {"small_input": True, "num_classes": 10, "input_size": 32, "width_mult": 0.5},
    "mobilenet_v2": {"small_input": True, "num_classes": 10, "input_size": 32, "width_mult": 0.5},
    "shufflenet_v2": {"small_input": True, "num_classes": 10, "input_size": 32, "width_mult": 0.5},
    "squeezenet1_0": {"num_classes": 10, "input_size": 64},
    "vgg11": {"num_classes": 10, "input_size": 32}, "vgg16": {"num_classes": 10, "input_size": 32},
    "vit_b16": {"num_classes": 10, "input_size": 32}, "bert_base": {"vocab_size": 100, "seq_len": 4},
}  # fmt: skip


EMBEDDERS = {"all-minilm-l6-v2"}  # sentence encoders: embeddings out, pruned through torch.export


def test_conformance_covers_the_whole_zoo():
    assert set(ZOO) | EMBEDDERS == set(ds.list_models()) and set(ZOO) >= EXPORTED


@pytest.mark.parametrize("name", sorted(EMBEDDERS))
def test_zoo_embedder_channel_pruned_through_torch_export(name):
    model = ds.create_model(name).eval()
    x = ds.example_input(name, batch_size=2)
    params, shape = sum(p.numel() for p in model.parameters()), model(x).shape
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert result.capture == "torch.export" and model(x).shape == shape
    assert sum(p.numel() for p in model.parameters()) < 0.9 * params  # the feed-forward layers lost half


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_channel_pruned(name, tmp_path):
    options = ZOO[name]
    model = ds.create_model(name, **options).eval()
    x = ds.example_input(name, batch_size=2, **options)
    before = ds.profile(model, x)
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=x)
    after = ds.profile(model, x)
    classes = options.get("num_classes", ds.models.get_model_entry(name).defaults()["num_classes"])
    assert tuple(model(x).shape) == (2, classes)
    assert after.macs < before.macs and after.params < before.params
    assert after.macs <= 0.75 * before.macs  # half of each prunable group's channels went
    if name in EXPORTED:
        result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=x)
        assert result.max_abs_error < 1e-3 and result.top1_agreement == 1.0
    if after.params < 10_000_000:  # the file round trip of bert_base and vit_b16 (still > 10 M parameters) is
        ds.save_model(model, tmp_path / "m.pt")  # bert_mini's and vit_tiny's (hundreds of MB written and scanned)
        back = ds.load_model(tmp_path / "m.pt").eval()
        assert torch.equal(back(x), model(x))


class WithGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.gru, self.head = nn.Linear(4, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.gru(self.embed(x))[0][:, -1])


def test_unknown_layer_is_left_whole_and_named():
    model, x = WithGRU(), torch.randn(2, 5, 4)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert "gru (GRU): not understood by the dependency graph" in result.skipped
    assert model.embed.out_features == 8 and model(x).shape == (2, 2)  # coupled to the GRU: kept whole


def test_bad_input():
    with pytest.raises(ds.ConfigError, match=r"ratio must be in \[0, 1\)"):
        ds.ChannelPruneConfig(ratio=1.0)
    with pytest.raises(ds.ConfigError, match="importance must be one of"):
        ds.ChannelPruneConfig(ratio=0.5, importance="random")
    with pytest.raises(ds.ConfigError, match="not a valid regular expression"):
        ds.ChannelPruneConfig(ratio=0.5, overrides={"re:(": 0.1})
    model, x = ds.create_model("resnet20"), ds.example_input("resnet20")
    with pytest.raises(ds.ConfigError, match="no layer matches 'layer9'"):
        ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5, ignore=("layer9",)), example_input=x)
    with pytest.raises(ds.ConfigError, match="needs example_input"):
        ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5))
    with pytest.raises(ds.ConfigError, match="taylor.*calib_data"):
        ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5, importance="taylor"), example_input=x)

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ds.UnsupportedModelError,
                       match="cannot capture the graph of Untraceable.*torch.fx.*torch.export.*MagnitudePruneConfig"):
        ds.prune_(Untraceable(), ds.ChannelPruneConfig(ratio=0.5), example_input=torch.randn(1, 4))
    assert sum(p.numel() for p in model.parameters()) == 269_722  # nothing was changed by the failed calls
