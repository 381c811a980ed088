"""Quantization paths the zoo does not reach: the point after a quantized layer that torch.fx cannot trace goes at the
end of its chain of pass-through operators (as the fx placer puts it), and the report reads a layer whose only
parametrization is on another tensor than its weight as a float layer."""

import torch
from torch import nn
from torch.nn.utils import parametrize

import deepslim as ds
from deepslim.compress.quantize._hooked_points import PointHook


class Branchy(nn.Module):
    """fx cannot trace a branch on a shape, so the points come from torch.export, as hooks."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.flat, self.head = nn.Linear(6, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[0] > 1000:
            x = x * 2
        return self.head(torch.tanh(self.flat(self.act(self.fc(x)))))


def _hooked(model: nn.Module) -> list[str]:
    hooks = {n: m._forward_hooks.values() for n, m in model.named_modules()}
    return sorted(n for n, hs in hooks.items() if any(isinstance(h, PointHook) for h in hs))


def test_the_point_after_a_layer_goes_at_the_end_of_its_pass_through_chain():
    model, x = Branchy().eval(), torch.randn(16, 6)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x])
    # fc -> relu -> flatten are one chain (relu and flatten move across a quantizer); tanh is not: the point
    # quantizes flatten's output, so the ReLU's zeros are on the grid
    assert _hooked(model) == ["flat"]
    point = model.deepslim_points[next(iter(model.deepslim_points))]
    assert float(point.zero) == 0.0  # calibrated on the ReLU output: non-negative, its zero point is 0
    h = model.flat(model.act.forward(model.fc(x)))  # (the hook quantizes flat's output)
    assert bool((h >= 0).all())


class Halve(nn.Module):
    def forward(self, b):
        return b / 2


def test_a_layer_parametrized_only_on_its_bias_is_reported_as_float():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    parametrize.register_parametrization(model[2], "bias", Halve())
    report = ds.compress.quantize.quantization_report(model)
    assert report.quantized == ()
    assert report.left == (("0", "skipped by an override"), ("2", "skipped by an override"))


def test_the_report_lists_layers_not_their_parametrization_containers():
    """Before the fix, a pruned (masked) layer was missing from the report and its mask container was listed as a
    layer of its own, "0.parametrizations.weight (ParametrizationList is not quantized)", also after binarizing."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    report = ds.compress.quantize.quantization_report(model)
    assert report.quantized == () and report.left == (("0", "skipped by an override"), ("2", "skipped by an override"))
    ds.quantize_(model, ds.BinaryConfig())
    report = ds.compress.quantize.quantization_report(model)
    assert report.quantized == (("0", "binary"), ("2", "binary")) and report.left == ()
    half = nn.Sequential(nn.Linear(4, 4)).half()
    parametrize.register_parametrization(half[0], "bias", Halve())
    assert ds.compress.quantize.quantization_report(half).quantized == (("0", "float16"),)


def test_a_point_hook_quantizes_float_outputs_only():
    from deepslim.compress.quantize._points import ActPoint

    point = ActPoint()
    point.enabled = True
    point.scale.fill_(0.5)
    hook = PointHook(point)
    ids = torch.tensor([3, 1, 2])
    assert hook(nn.Identity(), (), ids) is None  # integer outputs (token ids, indices) pass untouched
    assert hook(nn.Identity(), (), (torch.ones(2),)) is None  # so do tuples
    assert torch.equal(hook(nn.Identity(), (), torch.tensor([0.2, 0.8])), torch.tensor([0.0, 1.0]))
