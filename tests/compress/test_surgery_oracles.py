"""Layer surgery against the unpruned layer as the oracle: keeping channels [0, 2, 5] (not a prefix) must give
exactly the original layer's outputs for those channels, with trained (not freshly initialised) batch-norm
statistics, frozen parameters left frozen, and attention heads other than the first ones."""

import pytest
import torch
from torch import nn

from deepslim.compress.prune._surgery import (
    head_rows,
    keep_depthwise,
    keep_heads,
    keep_inputs,
    keep_norm,
    keep_outputs,
)
from deepslim.models.transformer import SelfAttention

IDX = torch.tensor([0, 2, 5])


def test_keep_outputs_of_a_convolution_gives_those_channels_of_the_original():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 6, 3, padding=1), torch.randn(2, 3, 5, 5)
    expected = conv(x)[:, IDX]
    conv.bias.requires_grad_(False)  # a frozen tensor stays frozen
    keep_outputs(conv, IDX)
    assert conv.out_channels == 3 and conv.weight.shape == (3, 3, 3, 3) and conv.bias.shape == (3,)
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.requires_grad and not conv.bias.requires_grad
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-6)


def test_keep_inputs_of_a_linear_layer_equals_zeroing_the_dropped_features():
    torch.manual_seed(0)
    fc, x = nn.Linear(6, 4), torch.randn(3, 6)
    dropped = x.clone()
    dropped[:, [1, 3, 4]] = 0.0
    expected = fc(dropped)
    bias = fc.bias.detach().clone()
    keep_inputs(fc, IDX)
    assert fc.in_features == 3 and fc.out_features == 4 and torch.equal(fc.bias, bias)  # outputs untouched
    torch.testing.assert_close(fc(x[:, IDX]), expected, rtol=0, atol=1e-6)


def test_keep_outputs_of_a_linear_layer_without_bias_and_of_an_embedding():
    torch.manual_seed(0)
    fc, x = nn.Linear(4, 6, bias=False), torch.randn(2, 4)
    expected = fc(x)[:, IDX]
    keep_outputs(fc, IDX)
    assert fc.bias is None and fc.out_features == 3
    torch.testing.assert_close(fc(x), expected, rtol=0, atol=1e-6)
    emb, ids = nn.Embedding(10, 6), torch.tensor([[1, 7, 3]])
    expected = emb(ids)[..., IDX]
    keep_outputs(emb, IDX)
    assert emb.embedding_dim == 3 and torch.equal(emb(ids), expected)


def test_keep_norm_keeps_trained_batch_norm_statistics_of_those_channels():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    bn.train()
    for _ in range(5):  # running statistics far from the fresh 0 / 1
        bn(torch.randn(8, 6, 4, 4) * torch.arange(1.0, 7.0).view(1, 6, 1, 1) + 3.0)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 6))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    bn.eval()
    x = torch.randn(2, 6, 3, 3)
    expected = bn(x)[:, IDX]
    mean, var = bn.running_mean[IDX].clone(), bn.running_var[IDX].clone()
    keep_norm(bn, IDX)
    assert bn.num_features == 3 and torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert not isinstance(bn.running_mean, nn.Parameter) and bn.num_batches_tracked == 5
    torch.testing.assert_close(bn(x[:, IDX]), expected, rtol=0, atol=1e-6)


def test_keep_norm_of_layer_norm_and_per_channel_group_norm():
    torch.manual_seed(0)
    ln, x = nn.LayerNorm(6), torch.randn(2, 6)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 2.0, 6))
    keep_norm(ln, IDX)
    assert ln.normalized_shape == (3,) and torch.equal(ln.weight, torch.linspace(0.5, 2.0, 6)[IDX])
    assert ln(x[:, IDX]).shape == (2, 3)
    gn = nn.GroupNorm(6, 6)
    with torch.no_grad():
        gn.bias.copy_(torch.arange(6.0))
    xg = torch.randn(2, 6, 3, 3)
    expected = gn(xg)[:, IDX]
    keep_norm(gn, IDX)
    assert gn.num_groups == gn.num_channels == 3
    torch.testing.assert_close(gn(xg[:, IDX]), expected, rtol=0, atol=1e-6)


def test_keep_depthwise_keeps_one_filter_per_kept_channel():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 6, 3, groups=6, padding=1), torch.randn(1, 6, 4, 4)
    expected = conv(x)[:, IDX]
    keep_depthwise(conv, IDX)
    assert conv.in_channels == conv.out_channels == conv.groups == 3
    torch.testing.assert_close(conv(x[:, IDX]), expected, rtol=0, atol=1e-6)


def test_head_rows_golden():
    assert head_rows(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert head_rows(torch.tensor([1]), 4).tolist() == [4, 5, 6, 7]


def _attention_without_heads(attn, x, drop):
    """The oracle: the original layer with the dropped heads' values zeroed (their share of the output is 0)."""
    rows = head_rows(torch.tensor(drop), attn.head_dim)
    value = attn.qkv if hasattr(attn, "qkv") else attn.value
    offset = 2 * attn.num_heads * attn.head_dim if hasattr(attn, "qkv") else 0
    with torch.no_grad():
        value.weight[rows + offset] = 0.0
        value.bias[rows + offset] = 0.0
    return attn(x)


@pytest.mark.parametrize("fused", [True, False])
def test_keep_heads_equals_the_original_with_the_other_heads_silenced(fused):
    torch.manual_seed(0)
    attn, x = SelfAttention(12, 4, fused_qkv=fused).eval(), torch.randn(2, 5, 12)
    expected = _attention_without_heads(attn, x, [0, 2])
    keep_heads(attn, torch.tensor([1, 3]))
    assert attn.num_heads == 2 and attn.proj.in_features == 6
    assert (attn.qkv.out_features == 18) if fused else (attn.query.out_features == attn.value.out_features == 6)
    torch.testing.assert_close(attn(x), expected, rtol=0, atol=1e-5)


def test_an_unknown_layer_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot remove channels of ReLU"):
        keep_outputs(nn.ReLU(), IDX)


def test_keep_inputs_of_an_embedding_is_refused_by_name():
    with pytest.raises(TypeError, match=r"^Embedding \(embedding\) has no input channels to remove$"):
        keep_inputs(nn.Embedding(5, 4), IDX)


class _Dense(nn.Module):
    """A user's layer stored as (in, out), with no bias attribute and no attribute counting its channels."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        return x @ self.weight


def test_keep_outputs_of_a_registered_user_layer_without_bias_or_count_attributes():
    from deepslim.models.adapters import LayerKind, register_layer_kind, unregister_layer_kind

    register_layer_kind(_Dense, LayerKind(name="dense", out_dim=1, in_dim=0, per_channel=("bias",)))
    try:
        torch.manual_seed(0)
        layer, x = _Dense(), torch.randn(2, 4)
        expected = layer(x)[:, IDX]
        keep_outputs(layer, IDX)
        assert layer.weight.shape == (4, 3) and not hasattr(layer, "bias")
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
        w = layer.weight.detach().clone()
        keep_inputs(layer, torch.tensor([1, 3]))
        assert torch.equal(layer.weight, w[[1, 3]])
    finally:
        unregister_layer_kind(_Dense)
