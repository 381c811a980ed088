"""Dropping residual blocks (elastic depth): which blocks of any model are droppable, found from shapes and the traced
residual addition; a dropped block equals its residual branch zeroed (the oracle); the exported graph loses its nodes;
the technique runs as a registered recipe stage; bad input is refused naming the droppable blocks."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from deepslim.compress.prune import BlockDropConfig, drop_blocks_, droppable_blocks, prune_
from deepslim.compress.prune.depth import examine_blocks
from deepslim.errors import ConfigError
from deepslim.models.mobilenet import InvertedResidual
from deepslim.techniques import get_technique

X = torch.randn(2, 1, 8, 8)


class Residual(nn.Module):
    """A user's basic block: ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``, activations as functions."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Down(Residual):
    """A residual block that halves the map and doubles the channels (projection shortcut): never droppable."""

    def __init__(self, ch: int) -> None:
        super().__init__(ch)
        self.conv1 = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(2 * ch), nn.BatchNorm2d(2 * ch)
        self.conv2 = nn.Conv2d(2 * ch, 2 * ch, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(ch, 2 * ch, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.proj(x) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Scaled(Residual):
    """Same shape out as in, but its output is not a residual sum (a conv after the addition): not droppable."""

    def __init__(self, ch: int) -> None:
        super().__init__(ch)
        self.post = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(x + self.conv1(x))


def _stats(net: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, then inference mode."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def tiny_resnet() -> nn.Module:
    """Stem, two 8-channel basic blocks, a downsampling block, a 16-channel basic block, a sequential head."""
    torch.manual_seed(0)
    return _stats(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        Residual(8), Residual(8), Down(8), Residual(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ))  # fmt: skip


class _MobileNet(nn.Module):
    """MobileNetV2's inverted residuals (the zoo's class): stride 2 in, 8 -> 8 stride 1 twice, 8 -> 12, 12 -> 12."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), InvertedResidual(8, 8, 2, 2),
                                      InvertedResidual(8, 8, 1, 3), InvertedResidual(8, 8, 1, 3),
                                      InvertedResidual(8, 12, 1, 3), InvertedResidual(12, 12, 1, 3))  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mobilenet() -> nn.Module:
    return _stats(_MobileNet())


def test_the_basic_blocks_with_identity_shortcuts_are_droppable_and_a_shape_changing_block_is_not():
    found = examine_blocks(tiny_resnet(), X)
    assert droppable_blocks(tiny_resnet(), X) == ["3", "4", "6"]
    assert found["5"] == "its output (2, 16, 4, 4) is not its input's shape (2, 8, 8, 8)"
    assert found["0"] == "its output (2, 8, 8, 8) is not its input's shape (2, 1, 8, 8)"
    assert found["9"] == "its output (2, 10) is not its input's shape (2, 16)"


def test_the_stride_1_inverted_residuals_with_as_many_channels_out_as_in_are_droppable():
    assert droppable_blocks(mobilenet(), X) == ["features.2", "features.3", "features.5"]
    found = examine_blocks(mobilenet(), X)
    assert found["features.4"] == "its output (2, 12, 4, 4) is not its input's shape (2, 8, 4, 4)"
    assert found["features.1"] == "its output (2, 8, 4, 4) is not its input's shape (2, 8, 8, 8)"
    assert found["features.3.conv.1"] == "its output is not a residual addition"  # depthwise: same shape


def test_the_zoo_resnet20_drops_every_block_but_the_downsampling_ones():
    net = ds.load_model("resnet20", num_classes=10, in_channels=1)
    assert droppable_blocks(net, torch.randn(1, 1, 28, 28)) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1",
                                                                 "layer2.2", "layer3.1", "layer3.2"]  # fmt: skip


def test_a_same_shape_block_whose_output_is_not_its_residual_sum_is_not_droppable():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Scaled(8), Residual(8)).eval()
    found = examine_blocks(net, X)
    assert found["1"] == "its output is not a residual addition" and found["2"] is None


def test_a_block_that_runs_twice_or_shares_its_weights_is_not_droppable():
    block = Residual(8)
    twice = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), block, block).eval()
    assert examine_blocks(twice, X)["1"] == "it runs 2 times"
    shared = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Residual(8), nn.Conv2d(8, 8, 3, padding=1)).eval()
    shared[2].weight = shared[1].conv1.weight
    assert examine_blocks(shared, X)["1"] == "its weights are shared with 2"


@pytest.mark.parametrize(("factory", "block", "last_bn"), [
    (tiny_resnet, "4", "4.bn2"),
    (mobilenet, "features.3", "features.3.conv.3"),
])  # fmt: skip
def test_a_dropped_block_computes_what_the_model_with_its_residual_branch_zeroed_computes(factory, block, last_bn):
    dropped, zeroed = factory(), factory()
    bn = zeroed.get_submodule(last_bn)
    bn.weight.data.zero_()
    bn.bias.data.zero_()  # the branch adds exactly 0: the block passes its (non-negative) input on
    prune_(dropped, BlockDropConfig(blocks=(block,)), example_input=X)
    assert isinstance(dropped.get_submodule(block), nn.Identity)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(dropped(x), zeroed(x), atol=1e-6)
        assert not torch.allclose(dropped(x), factory()(x), atol=1e-3)  # the block did matter
    gone = [k for k in factory().state_dict() if k not in dropped.state_dict()]
    assert gone and all(k.startswith(block + ".") for k in gone)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter warns that it is deprecated
def test_the_exported_graph_loses_the_dropped_blocks_nodes(tmp_path):
    onnx = pytest.importorskip("onnx")
    net = tiny_resnet()
    torch.onnx.export(net, (X[:1],), str(tmp_path / "dense.onnx"), dynamo=False)  # the fast exporter: nodes as traced
    prune_(net, BlockDropConfig(blocks=("3", "6")), example_input=X)
    torch.onnx.export(net, (X[:1],), str(tmp_path / "dropped.onnx"), dynamo=False)
    dense, dropped = (onnx.load(str(tmp_path / f"{n}.onnx")).graph for n in ("dense", "dropped"))
    convs = [sum(n.op_type == "Conv" for n in g.node) for g in (dense, dropped)]
    assert convs == [1 + 2 + 2 + 3 + 2, 1 + 2 + 3]  # stem, blocks 3 and 4, Down (with its projection), block 6
    assert len(dropped.node) < len(dense.node)


def test_count_drops_the_blocks_that_change_their_input_least():
    net = tiny_resnet()
    for name, scale in (("3", 1.0), ("4", 0.01), ("6", 0.1)):  # the branch's size sets the block's importance
        net.get_submodule(f"{name}.bn2").weight.data.mul_(scale)
        net.get_submodule(f"{name}.bn2").bias.data.mul_(scale)
    assert drop_blocks_(copy.deepcopy(net), BlockDropConfig(count=2), X) == ["4", "6"]
    assert drop_blocks_(copy.deepcopy(net), BlockDropConfig(blocks=("3",), count=1), X) == ["3", "4"]


class Nest(nn.Module):
    """A residual block made of two residual blocks: three droppable blocks, one inside another."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Residual(ch), Residual(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_count_picks_no_block_that_contains_or_lies_inside_a_named_or_picked_one(monkeypatch):
    from deepslim.compress.prune import depth as depth_mod

    torch.manual_seed(0)
    net = _stats(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Nest(8), Residual(8), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear(8, 10)))  # fmt: skip
    assert droppable_blocks(net, X) == ["1", "2", "1.body.0", "1.body.1"]
    scores = {"1": 0.1, "1.body.1": 0.2, "2": 0.3}  # the parent of the named block would be the least important
    monkeypatch.setattr(depth_mod, "_importance", lambda model, names, *_: {n: scores.get(n, 0.5) for n in names})
    named = drop_blocks_(copy.deepcopy(net), BlockDropConfig(blocks=("1.body.0",), count=1), X)
    assert named == ["1.body.0", "1.body.1"]  # not "1": it holds the named block
    dropped = drop_blocks_(copy.deepcopy(net), BlockDropConfig(count=2), X)
    assert dropped == ["1", "2"]  # "1.body.1" lies inside "1", picked first: skipped for the next, in model order
    with pytest.raises(ConfigError, match="count 3 asks for more blocks than the 2 droppable ones left that do not "
                                          "contain one another: 1, 2"):  # fmt: skip
        drop_blocks_(copy.deepcopy(net), BlockDropConfig(count=3), X)
    # a named block inside another named one goes with it
    assert drop_blocks_(copy.deepcopy(net), BlockDropConfig(blocks=("1.body.0", "1")), X) == ["1"]


def test_naming_a_block_that_is_not_droppable_lists_the_droppable_ones():
    with pytest.raises(ConfigError, match=r"block '5' is not droppable \(its output \(2, 16, 4, 4\) is not its input's "
                                          r"shape \(2, 8, 8, 8\)\); droppable blocks: 3, 4, 6"):  # fmt: skip
        prune_(tiny_resnet(), BlockDropConfig(blocks=("5",)), example_input=X)
    with pytest.raises(ConfigError, match=r"block 'layer9' is not droppable \(no child of an nn.Sequential has that "
                                          r"name\); droppable blocks: 3, 4, 6"):  # fmt: skip
        prune_(tiny_resnet(), BlockDropConfig(blocks=("layer9",)), example_input=X)
    with pytest.raises(ConfigError, match="count 4 asks for more blocks than the 3 droppable ones left: 3, 4, 6"):
        prune_(tiny_resnet(), BlockDropConfig(count=4), example_input=X)
    with pytest.raises(ConfigError, match="dropping blocks needs example_input"):
        prune_(tiny_resnet(), BlockDropConfig(blocks=("3",)))
    with pytest.raises(ConfigError, match="count must be an integer >= 0"):
        BlockDropConfig(count=-1)
    with pytest.raises(ConfigError, match="blocks is a list of module names"):
        BlockDropConfig(blocks="3")


def test_the_technique_is_registered_once_and_a_recipe_stage_reads_it():
    from deepslim.pipeline import load_recipe

    technique = get_technique("depth")
    assert technique.config is BlockDropConfig and technique.kind == "prune"
    recipe = load_recipe({"stages": [{"prune": {"method": "depth", "blocks": ["4"], "epochs": 0}}]})
    config = recipe.stages[0].config
    assert config == BlockDropConfig(blocks=("4",))
    net = tiny_resnet()
    technique.apply(net, config, example_input=X)  # what a recipe stage calls (the search's tests run whole recipes)
    assert isinstance(net[4], nn.Identity) and isinstance(net[3], Residual)
