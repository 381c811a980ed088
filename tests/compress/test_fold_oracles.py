"""Batch-norm folding against PyTorch's own conv-BN fusion (torch.nn.utils.fusion.fuse_conv_bn_eval), with trained
(non-default) statistics, a non-default eps, BN without affine parameters, convolutions with and without bias, in
1-D/2-D/3-D; and which pairs may fold: only a BN that directly and solely follows a convolution, found by torch.fx or,
for models fx cannot trace, by torch.export."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from deepslim.compress.quantize._fold import fold_batchnorm_
from deepslim.errors import UnsupportedModelError


def _trained(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> nn.modules.batchnorm._BatchNorm:
    """Statistics as training leaves them: means of both signs, variances far from 1, gamma/beta not 1/0."""
    gen = torch.Generator().manual_seed(seed)
    c = bn.num_features
    bn.running_mean.copy_(torch.randn(c, generator=gen) * 2 - 0.5)
    bn.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.05)
    if bn.affine:
        bn.weight.data.copy_(torch.randn(c, generator=gen))  # negative gammas too
        bn.bias.data.copy_(torch.randn(c, generator=gen))
    return bn


class _Seq(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.block = nn.Sequential(conv, bn)  # nested: the BN is replaced on its parent, not on the model

    def forward(self, x):
        return self.block(x)


CASES = [
    (nn.Conv1d(3, 4, 3, bias=True), nn.BatchNorm1d(4, eps=0.1), (2, 3, 9)),
    (nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5, eps=1e-3), (2, 3, 7, 7)),
    (nn.Conv2d(2, 4, 1, bias=True), nn.BatchNorm2d(4, affine=False, eps=0.5), (2, 2, 5, 5)),
    (nn.Conv3d(2, 3, 2, bias=False), nn.BatchNorm3d(3, eps=0.2), (1, 2, 4, 4, 4)),
]


@pytest.mark.parametrize(("conv", "bn", "shape"), CASES, ids=["1d-bias", "2d-nobias", "2d-noaffine", "3d"])
def test_folded_convolution_equals_pytorchs_fusion(conv, bn, shape):
    torch.manual_seed(0)
    model = _Seq(conv, _trained(bn, 1)).eval()
    ref = fuse_conv_bn_eval(copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval())
    x = torch.randn(shape) - 0.3
    expected = model(x)
    assert fold_batchnorm_(model) == ["block.1"]
    assert isinstance(model.block[1], nn.Identity) and model.block[0] is conv
    torch.testing.assert_close(conv.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.bias, ref.bias, rtol=1e-5, atol=1e-6)
    assert isinstance(conv.bias, nn.Parameter) and conv.bias.dtype == conv.weight.dtype
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_a_top_level_batch_norm_is_replaced_on_the_model_itself():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _trained(nn.BatchNorm2d(2), 2), nn.ReLU()).eval()
    x = torch.randn(1, 1, 5, 5)
    expected = model(x)
    assert fold_batchnorm_(model) == ["1"] and isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


class _Branches(nn.Module):
    """Four BNs of which only ``ok`` may fold: one follows a conv whose output is also used elsewhere, one follows a
    Linear, one follows a pruned (parametrized) conv, one tracks no running statistics."""

    def __init__(self):
        super().__init__()
        self.c_ok, self.ok = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
        self.c_shared, self.shared = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
        self.lin, self.after_linear = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.c_pruned, self.pruned = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
        self.c_nostats, self.nostats = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x):
        s = self.c_shared(x)
        # the foldable pair comes after one that is not: the search goes on past a refusal
        y = self.shared(s) + s + self.pruned(self.c_pruned(x)) + self.ok(self.c_ok(x)) + self.nostats(self.c_nostats(x))
        return y.flatten(1)[:, :4] + self.after_linear(self.lin(x.flatten(1)[:, :4]))


def test_only_a_batch_norm_that_solely_follows_an_unpruned_convolution_folds():
    from deepslim.compress.prune.masks import set_mask_

    torch.manual_seed(0)
    model = _Branches()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            _trained(m, 3)
    set_mask_(model.c_pruned, torch.ones_like(model.c_pruned.weight))
    model.eval()
    x = torch.randn(4, 2, 2, 2)
    expected = model(x)
    assert fold_batchnorm_(model) == ["ok"]
    assert [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [
        "shared", "after_linear", "pruned", "nostats"]  # fmt: skip
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


class _Untraceable(nn.Module):
    """Control flow on a shape: torch.fx cannot trace it, torch.export (non-strict) can."""

    def __init__(self, shared: bool = False):
        super().__init__()
        # a batch norm with nothing of its own (no affine, no running statistics) reads no module's tensors
        self.conv0, self.plain = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, affine=False, track_running_stats=False)
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3, eps=0.3)
        self.shared = shared

    def forward(self, x):
        if x.shape[0] > 0:  # a Python bool of a traced value
            y = self.bn(self.conv(self.plain(self.conv0(x))))
            y = self.bn2(self.conv2(y))
            return self.bn2(self.conv2(y)) if self.shared else y  # conv2/bn2 called twice: not foldable
        return x


def _untraceable(shared=False):
    torch.manual_seed(0)
    model = _Untraceable(shared)
    _trained(model.bn, 4)
    _trained(model.bn2, 5)
    return model.eval()


def test_a_model_fx_cannot_trace_folds_through_torch_export_and_keeps_its_outputs():
    model, x = _untraceable(), torch.randn(2, 2, 5, 5)
    expected = model(x)
    ref = fuse_conv_bn_eval(copy.deepcopy(model.conv2), copy.deepcopy(model.bn2))
    assert fold_batchnorm_(model, (x,)) == ["bn", "bn2"]
    torch.testing.assert_close(model.conv2.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_torch_export_pairs_leave_a_convolution_and_batch_norm_that_are_called_twice():
    model, x = _untraceable(shared=True), torch.randn(2, 2, 5, 5)
    expected = model(x)
    assert fold_batchnorm_(model, (x,)) == ["bn"]
    assert isinstance(model.bn2, nn.BatchNorm2d)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


class _Untraceable1d3d(nn.Module):
    """torch.export pairs in 3-D and 1-D; the last convolution's output is also added to its BN's: not foldable."""

    def __init__(self):
        super().__init__()
        self.conv3, self.bn3 = nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3)
        self.conv1, self.bn1 = nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3)
        self.conv_s, self.bn_s = nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3)

    def forward(self, x):
        if x.shape[0] > 0:
            z = self.bn1(self.conv1(self.bn3(self.conv3(x)).flatten(2)))
            s = self.conv_s(z)
            return self.bn_s(s) + s
        return x


def test_torch_export_folds_1d_and_3d_pairs_but_not_a_convolution_whose_output_is_used_twice():
    torch.manual_seed(0)
    model = _Untraceable1d3d()
    for i, bn in enumerate((model.bn3, model.bn1, model.bn_s)):
        _trained(bn, 7 + i)
    model.eval()
    x = torch.randn(2, 2, 2, 2, 2)
    expected = model(x)
    assert fold_batchnorm_(model, (x,)) == ["bn3", "bn1"] and isinstance(model.bn_s, nn.BatchNorm1d)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_an_untraceable_model_without_an_example_is_refused_with_what_to_do():
    model = _untraceable()
    with pytest.raises(UnsupportedModelError, match=r"cannot trace _Untraceable with torch\.fx.*fold_batchnorm=False"):
        fold_batchnorm_(model)
    assert isinstance(model.bn, nn.BatchNorm2d)  # nothing half-folded


def test_a_model_neither_capture_can_read_is_refused_naming_both_errors():
    model = _untraceable()
    with pytest.raises(UnsupportedModelError, match=r"torch\.fx: .+; torch\.export: .+\).*fold_batchnorm=False"):
        fold_batchnorm_(model, ("not a tensor",))


class _NamedLikeALayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, norm):  # an input named like the batch-norm layer is not that layer
        return self.norm(self.conv(norm))


def test_an_input_named_like_a_batch_norm_layer_is_not_taken_for_it():
    model = _NamedLikeALayer()
    _trained(model.norm, 6)
    model.eval()
    x = torch.randn(1, 2, 3, 3)
    expected = model(x)
    assert fold_batchnorm_(model) == ["norm"]
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_a_model_without_running_statistics_needs_no_capture():
    # untraceable and no example, but nothing to fold: no error
    model = _Untraceable()
    model.bn, model.bn2 = nn.BatchNorm2d(3, track_running_stats=False), nn.Identity()
    assert fold_batchnorm_(model) == []


def test_a_half_precision_convolution_keeps_its_dtype_for_the_folded_bias():
    # the statistics stay fp32 (as mixed precision keeps them): the new bias is cast back to the weight's dtype
    model = _Seq(nn.Conv2d(2, 3, 1, bias=True).to(torch.bfloat16), _trained(nn.BatchNorm2d(3), 8)).eval()
    conv = model.block[0]
    ref = fuse_conv_bn_eval(copy.deepcopy(conv).float(), copy.deepcopy(model.block[1]))
    assert fold_batchnorm_(model) == ["block.1"]
    assert conv.weight.dtype == conv.bias.dtype == torch.bfloat16
    torch.testing.assert_close(conv.bias.float(), ref.bias, rtol=1e-2, atol=1e-2)
