"""Operator coverage: activations and their in-place forms, in-place views, fused attention, weight parametrizations."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.utils._python_dispatch import TorchDispatchMode

import deepslim as ds
from deepslim.analysis._ops import MAC_HANDLERS, OpKind, classify

profiler = importlib.import_module("deepslim.analysis.profile")
aten = torch.ops.aten


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


ACTIVATIONS = [nn.Hardswish(), nn.Hardswish(inplace=True), nn.Hardsigmoid(), nn.Hardsigmoid(inplace=True), nn.SiLU(),
               nn.SiLU(inplace=True), nn.GELU(), nn.GELU(approximate="tanh"), nn.Mish(), nn.Mish(inplace=True),
               nn.ELU(inplace=True), nn.LeakyReLU(inplace=True), nn.ReLU6(inplace=True), nn.Threshold(0.1, 0.0, True),
               nn.PReLU(), nn.Softplus(), nn.LogSigmoid(), nn.GLU(), Fn(lambda x: x.relu_())]  # fmt: skip


@pytest.mark.parametrize("act", ACTIVATIONS, ids=[repr(a) for a in ACTIVATIONS])
def test_activations_and_their_in_place_forms_are_counted_per_element(act):
    model = nn.Sequential(nn.Linear(4, 6), act)
    prof = ds.profile(model, torch.randn(3, 4))  # strict: an unknown operator would raise
    assert prof.macs == 3 * 4 * 6
    assert prof.layer("1").other_ops == 3 * 6  # one per element of the larger of input and output
    # input 48 B + Linear's 72 B; an out-of-place activation adds its own output, an in-place one writes in place
    # (GLU halves its input; PyTorch's log_sigmoid also writes a buffer of the same size for backward)
    out_bytes = {nn.GLU: 36, nn.LogSigmoid: 144}.get(type(act), 72)
    inplace = getattr(act, "inplace", False) or isinstance(act, Fn)
    assert prof.peak_activation_bytes == max(48 + 72, 72 + (0 if inplace else out_bytes))


def test_in_place_views_cost_nothing():
    def views(y):
        y.unsqueeze_(0)  # (1, 3, 6)
        y.transpose_(1, 2)  # (1, 6, 3)
        y.squeeze_(0)  # (6, 3)
        y.t_()  # (3, 6)
        y.as_strided_((2, 6), (6, 1))
        return y.relu()

    inplace = ds.profile(nn.Sequential(nn.Linear(4, 6), Fn(views)), torch.randn(3, 4))
    plain = ds.profile(nn.Sequential(nn.Linear(4, 6), Fn(lambda y: y[:2].relu())), torch.randn(3, 4))
    assert (inplace.macs, inplace.other_ops) == (plain.macs, plain.other_ops) == (72, 12)
    assert inplace.layer("1").output_shape == (2, 6) and inplace.peak_activation_bytes == plain.peak_activation_bytes


@pytest.mark.parametrize("name", ["transpose_", "unsqueeze_", "squeeze_", "as_strided_", "t_", "swapdims_", "detach_"])
def test_every_in_place_view_overload_is_free(name):
    packet = getattr(aten, name)
    assert all(classify(getattr(packet, o)) is OpKind.FREE for o in packet.overloads())


def test_out_variants_cost_what_their_functional_form_costs():
    assert classify(aten.hardswish.out) is OpKind.ARITH and classify(aten.gelu_.default) is OpKind.ARITH
    assert classify(aten.cat.out) is OpKind.MOVE and classify(aten.addmm_.default) is OpKind.MAC
    assert classify(aten.linalg_inv_ex.default) is None  # still unknown: the profiler does not guess


def _fused_ops(module, *args):
    """ATen operators one eval forward of ``module`` dispatches, without the profiler's hooks."""
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append((func, args))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        module.eval()(*args)
    return seen


def _mha_macs(batch, lq, s, e):
    return batch * (2 * lq * e * e + 2 * s * e * e + 2 * lq * s * e)  # Q, K, V and out projections, QKᵀ and PV


@pytest.mark.parametrize("batch,length,dim,heads", [(2, 5, 16, 4), (3, 4, 32, 8)])
def test_fused_multi_head_attention_counts_what_the_unfused_path_counts(batch, length, dim, heads):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    x = torch.randn(batch, length, dim)
    assert aten._native_multi_head_attention.default in [f for f, _ in _fused_ops(mha, x, x, x)]
    fast = profiler._trace(mha, (x, x, x), strict=True, name="mha", fake=False)  # eval + no_grad: the fused kernel
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        slow = profiler._trace(mha, (x, x, x), strict=True, name="mha", fake=False)
        slow_fake = ds.profile(mha, (x, x, x))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert fast.macs == slow.macs == slow_fake.macs == ds.profile(mha, (x, x, x)).macs
    assert fast.macs == _mha_macs(batch, length, length, dim)


def test_fused_transformer_encoder_layer_counts_attention_and_feed_forward():
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    fused = [(f, a) for f, a in _fused_ops(layer, x) if f is aten._transformer_encoder_layer_fwd.default]
    assert len(fused) == 1  # without the profiler's hooks, the whole layer is one kernel
    macs = MAC_HANDLERS[aten._transformer_encoder_layer_fwd](fused[0][1], None)
    assert macs == ds.profile(layer, x).macs == _mha_macs(2, 5, 5, 16) + 2 * (2 * 5 * 16 * 32)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_encoder_with_padding_mask_counts_only_the_real_tokens():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2)
    x, pad = torch.randn(2, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    fast = profiler._trace(enc, {"src": x, "src_key_padding_mask": pad}, strict=True, name="e", fake=False)
    per_layer = sum(4 * n * 16 * 16 + 2 * n * n * 16 for n in (5, 3)) + 2 * 8 * 16 * 32  # nested: no padded rows
    assert fast.macs == 2 * per_layer
    assert ds.profile(enc, {"src": x, "src_key_padding_mask": pad}).macs == fast.macs  # the fake run: same path


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


WRAPS = {
    "weight_norm": lambda m: parametrizations.weight_norm(m),
    "weight_norm (hooks)": lambda m: nn.utils.weight_norm(m),
    "spectral_norm": lambda m: parametrizations.spectral_norm(m),
    "spectral_norm (hooks)": lambda m: nn.utils.spectral_norm(m),
}


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("wrap", list(WRAPS), ids=list(WRAPS))
@pytest.mark.parametrize("fake", [True, False], ids=["fake", "real"])
def test_weight_parametrizations_count_their_parameters_once_and_no_recomputation(wrap, fake):
    model, plain = _net(), _net()
    WRAPS[wrap](model[0]), WRAPS[wrap](model[3])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
    prof = profiler._trace(model, x, strict=True, name=wrap, fake=fake)
    base = ds.profile(plain, x)
    assert prof.params == sum(p.numel() for p in model.parameters())
    norm = wrap.startswith("weight_norm")  # magnitude (one per output channel) and direction are both parameters
    assert prof.layer("0").params == 8 * 27 + 8 + (8 if norm else 0)
    assert prof.layer("3").params == 288 * 10 + 10 + (10 if norm else 0)
    assert (prof.macs, prof.other_ops) == (base.macs, base.other_ops)  # recomputing the weight is not inference work
    assert prof.weight_bytes == 4 * prof.params  # as stored; spectral norm's power-iteration vectors are not weights
    assert [lp.name for lp in prof.layers] == [lp.name for lp in base.layers]
    with torch.no_grad():
        assert type(model[0].weight) is torch.Tensor and torch.equal(model(x), expected)  # nothing fake left behind


def test_unknown_functional_on_top_of_known_ops_still_refused():
    with pytest.raises(ds.UnsupportedOpError, match="linalg_inv_ex"):
        ds.profile(Fn(torch.linalg.inv), torch.eye(3)[None] * 2)
    assert ds.profile(Fn(lambda x: F.hardswish(x, inplace=True)), torch.randn(2, 5)).other_ops == 10
