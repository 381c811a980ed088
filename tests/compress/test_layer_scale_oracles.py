"""A per-channel scale that a module keeps as a vector and reshapes in its forward (layer scale, ``gamma[:, None,
None] * x`` or ``gamma.view(-1, 1, 1) * x``) ties the channels it multiplies: torch.fx sees an opaque (C, 1, 1)
tensor, which must not be taken for a per-sample scalar. The group it scales stays whole, saying why, and the
other groups of the model are still pruned (before the fix the scaled group was pruned, the model broke and
``prune_`` refused the whole model)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds


class _LayerScale(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        g = self.gamma[:, None, None] if self.how == "index" else self.gamma.view(-1, 1, 1)
        return x * g


class _Net(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.stem, self.a = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.scale, self.fc = _LayerScale(how), nn.Linear(8, 2)

    def forward(self, x):
        y = F.relu(self.a(F.relu(self.stem(x))))
        return self.fc(self.scale(y).mean((2, 3)))


@pytest.mark.parametrize("how", ["index", "view"])
def test_a_layer_scale_keeps_its_channels_whole_and_the_rest_is_pruned(how):
    torch.manual_seed(0)
    model, x = _Net(how).eval(), torch.randn(2, 3, 6, 6)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert model.a.out_channels == 8 and model.scale.gamma.shape == (8,)
    assert model.stem.out_channels == 3 and model.a.in_channels == 3  # the other group is pruned
    whole = [b for b in result.blocked if b.startswith("a out")]
    assert len(whole) == 1 and "mul" in whole[0], result.blocked
    assert model(x).shape == (2, 2)


def test_a_model_whose_only_group_is_scaled_is_left_unchanged_instead_of_refused():
    class Single(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.scale, self.fc = nn.Conv2d(3, 8, 3, padding=1), _LayerScale("index"), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.scale(F.relu(self.a(x))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Single().eval(), torch.randn(2, 3, 6, 6)
    before = model(x)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert result.blocked[0] == "a out (8 channels; not prunable: mul combines tensors whose channels do not line up)"
    assert model.a.out_channels == 8 and torch.equal(model(x), before)
