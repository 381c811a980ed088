"""Quantization: bit-exact oracles against PyTorch, SQNR bounds, BN folding, k-means properties, accuracy on real
data, and bad input."""

import copy

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import (
    BinaryConfig,
    Float16Config,
    KMeansConfig,
    LinearQuantConfig,
    PowerOfTwoConfig,
    TernaryConfig,
    cluster_,
    fake_quantize,
    fold_batchnorm_,
    qrange,
    quantization_report,
    quantize_,
    sqnr_db,
)
from deepslim.compress.quantize._fakequant import affine_params
from deepslim.compress.quantize.observers import Calibration, Observer

# integer ranges written out, not computed by qrange: unsigned 0..2^b-1; signed symmetric, without -2^(b-1)
RANGES = {2: ((0, 3), (-1, 1)), 4: ((0, 15), (-7, 7)), 6: ((0, 63), (-31, 31)), 8: ((0, 255), (-127, 127))}


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_fake_quant_matches_pytorch_bit_for_bit_on_the_written_out_integer_ranges(bits):
    unsigned, signed = RANGES[bits]
    assert qrange(bits, signed=False) == unsigned and qrange(bits, signed=True) == signed
    torch.manual_seed(bits)
    x = torch.randn(16, 7, 3) * 3  # wide enough that both ends of every range clamp
    scale, zero = 0.037, (unsigned[0] + unsigned[1]) // 2
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zero, *unsigned)
    assert torch.equal(fake_quantize(x, torch.tensor(scale), torch.tensor(zero), *unsigned), expected)
    assert expected.max() > expected.min()  # not a degenerate all-clamped tensor
    scales = torch.rand(16) * 0.1 + 0.01
    zeros = torch.zeros(16, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, scales, zeros, 0, *signed)
    assert torch.equal(fake_quantize(x, scales, zeros, *signed, axis=0), expected)


@pytest.mark.parametrize("bits,min_db", [(8, 38.0), (6, 26.0), (4, 14.0), (3, 8.0)])
def test_sqnr_lower_bounds_per_bit_width(bits, min_db):
    # theory for a uniform quantizer on N(0,1) clipped at its max (~4.4σ for 64k samples): ≈ 6.02·b − 7.9 dB
    torch.manual_seed(0)
    w = torch.randn(64, 1024)
    lo, hi = w.min(1).values, w.max(1).values
    scale, zero = affine_params(lo, hi, bits, symmetric=True, signed=True)
    qmin, qmax = qrange(bits, True)
    assert sqnr_db(w, fake_quantize(w, scale, zero, qmin, qmax, axis=0)) >= min_db


def test_zero_is_exact_and_ranges_contain_it():
    scale, zero = affine_params(torch.tensor(0.5), torch.tensor(3.0), 8, symmetric=False, signed=False)
    assert fake_quantize(torch.zeros(3), scale, zero, 0, 255).eq(0).all()
    assert int(zero) == 0  # a positive-only range starts at 0


def test_calibration_methods_clip_outliers():
    torch.manual_seed(0)
    x = torch.randn(100_000).abs()
    x[:5] = 50.0  # rare activation outliers
    ranges = {}
    for method in (Calibration.MINMAX, Calibration.PERCENTILE, Calibration.MSE, Calibration.ENTROPY):  # static ones
        obs = Observer(method, 8)
        obs.update(x)
        ranges[method] = obs.range()
    assert ranges[Calibration.MINMAX][1] == 50.0
    for method in (Calibration.PERCENTILE, Calibration.MSE, Calibration.ENTROPY):
        assert ranges[method][0] == 0.0 and 2.0 < ranges[method][1] < 20.0, (method, ranges[method])


def test_batchnorm_folding_preserves_outputs():
    model = ds.create_model("resnet20").eval()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    folded = fold_batchnorm_(model)
    assert len(folded) == 19 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained():
    data = ds.load_data("digits")
    torch.manual_seed(0)
    model = ds.create_model("lenet5", input_size=8)
    ds.fit(model, data, epochs=15, lr=2e-3)
    return model, data


def test_int8_ptq_keeps_accuracy_on_real_digits(trained):
    model, data = trained
    base = ds.evaluate(model, data.test).accuracy
    for calibration in ("minmax", "percentile", "mse", "entropy"):
        q = quantize_(copy.deepcopy(model), LinearQuantConfig(calibration=calibration), calib_data=data.calib)
        assert ds.evaluate(q, data.test).accuracy >= base - 0.005, calibration


def test_quantized_layers_report_true_bytes_and_int8_arithmetic(trained):
    model, data = trained
    q = quantize_(copy.deepcopy(model), LinearQuantConfig(overrides={"classifier.3": 4}), calib_data=data.calib)
    prof = ds.profile(q, data.example_input)
    fc = prof.layer("classifier.3")
    assert fc.weight_bytes == 10 * 500 * 4 // 8 + 10 * 4 + 10 * 4  # 4-bit codes + per-channel scales + fp32 bias
    assert prof.layer("features.0").weight_bytes == 20 * 25 + 20 * 4 + 20 * 4 and fc.dtype == "int8"
    report = quantization_report(q)
    assert ("classifier.3", "int4 w per-channel / u8 act") in report.quantized and not report.left


def test_weight_only_and_4_bit(trained):
    model, data = trained
    q = quantize_(copy.deepcopy(model), LinearQuantConfig(bits=4, activation_bits=None))
    assert ds.evaluate(q, data.test).accuracy >= ds.evaluate(model, data.test).accuracy - 0.03
    assert ds.profile(q, data.example_input).layers[0].dtype == "fp32"


def test_qat_learns_scales(trained):
    model, data = trained
    q = quantize_(copy.deepcopy(model), LinearQuantConfig(bits=4, qat=True), calib_data=data.calib)
    before = q.classifier[1].weight_scale.detach().clone()
    ds.fit(q, data, epochs=2, lr=1e-3)
    assert not torch.equal(before, q.classifier[1].weight_scale.detach())
    assert ds.evaluate(q, data.test).accuracy >= 0.9


def test_kmeans_codebook_index_round_trip_and_zeros(trained):
    model, data = trained
    m = copy.deepcopy(model)
    ds.prune_(m, ds.MagnitudePruneConfig(sparsity=0.5))
    zeros_before = {n: (l.weight == 0).clone() for n, l in m.named_modules() if isinstance(l, (nn.Linear, nn.Conv2d))}
    cluster_(m, KMeansConfig(bits=3))
    for name, layer in m.named_modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        w = layer.weight
        codebook = layer.parametrizations.weight.original
        shared = layer.parametrizations.weight[0]
        assert torch.equal(w[shared.keep], codebook[shared.index][shared.keep])  # weight = codebook[index]
        assert torch.equal(w == 0, zeros_before[name])  # pruned weights stay zero, and zero is not a cluster
        assert len(torch.unique(w[w != 0])) <= 8
    acc = ds.evaluate(m, data.test).accuracy
    ds.fit(m, data, epochs=2, lr=1e-3)  # centroid fine-tuning
    for layer in (m.features[0], m.classifier[1]):
        assert len(torch.unique(layer.weight[layer.weight != 0])) <= 8 and (layer.weight == 0).sum() > 0
    assert ds.evaluate(m, data.test).accuracy >= min(acc, 0.9)


def test_kmeans_linear_init_and_gradient_sums_per_centroid():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.1, 5.0, 5.2]]))
    cluster_(nn.Sequential(layer), KMeansConfig(bits=1))
    codebook = layer.parametrizations.weight.original
    assert torch.allclose(codebook.sort().values, torch.tensor([1.05, 5.1]))
    layer(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert torch.allclose(codebook.grad.sort().values, torch.tensor([3.0, 7.0]))  # 1+2 and 3+4


def test_binary_ternary_power_of_two(trained):
    model, data = trained
    b = quantize_(copy.deepcopy(model), BinaryConfig())
    w = b.classifier[1].weight
    assert all(len(torch.unique(row.abs())) == 1 for row in w)  # ±α per output channel
    t = quantize_(copy.deepcopy(model), TernaryConfig())
    w = t.classifier[1].weight
    assert all(len(torch.unique(row.abs())) <= 2 and (row == 0).any() for row in w)
    p = quantize_(copy.deepcopy(model), PowerOfTwoConfig(bits=4))
    w = p.classifier[1].weight
    nz = w[w != 0].abs()
    assert torch.equal(torch.log2(nz), torch.round(torch.log2(nz))) and len(torch.unique(nz)) <= 7
    assert ds.profile(b, data.example_input).weight_bytes < ds.profile(model, data.example_input).weight_bytes / 20


def test_half_precision(trained):
    model, data = trained
    q = quantize_(copy.deepcopy(model), Float16Config(dtype="bf16"))
    assert ds.profile(q, data.example_input).weight_bytes == ds.profile(model, data.example_input).weight_bytes // 2
    assert ds.evaluate(q, data.test).accuracy >= ds.evaluate(model, data.test).accuracy - 0.01


@pytest.mark.parametrize("name,options", [
    ("resnet20", {}), ("vit_tiny", {"depth": 2}),
    ("mobilenet_v2", {"small_input": True, "num_classes": 10, "width_mult": 0.5, "input_size": 32}),
    ("bert_mini", {"vocab_size": 1000, "seq_len": 16, "depth": 2}),
])  # fmt: skip
def test_zoo_int8_conformance(name, options):
    model = ds.create_model(name, **options).eval()
    x = ds.example_input(name, batch_size=4, **options)
    before = ds.profile(model, x)
    q = quantize_(copy.deepcopy(model), LinearQuantConfig(), calib_data=[x])
    after = ds.profile(q, x)
    assert q(x).shape == model(x).shape and after.weight_bytes < 0.45 * before.weight_bytes
    report = quantization_report(q)
    if name == "bert_mini":  # embeddings and layer norms stay in floating point, and are listed
        assert any(n == "word_embeddings" for n, _ in report.left)


def test_bad_input():
    with pytest.raises(ds.ConfigError, match="bits must be an integer from 2 to 8"):
        LinearQuantConfig(bits=9)
    with pytest.raises(ds.ConfigError, match="calibration must be one of"):
        LinearQuantConfig(calibration="magic")
    with pytest.raises(ds.ConfigError, match="needs calib_data"):
        quantize_(ds.create_model("lenet300"), LinearQuantConfig())
    with pytest.raises(ds.ConfigError, match="no quantizable layer matches 'fc9'"):
        quantize_(ds.create_model("lenet300"), LinearQuantConfig(activation_bits=None, overrides={"fc9": 4}))
    with pytest.raises(ds.ConfigError, match="cluster_"):
        quantize_(ds.create_model("lenet300"), KMeansConfig())
    with pytest.raises(ds.ConfigError, match="from 1 to 8"):
        KMeansConfig(bits=0)
    with pytest.raises(ds.ConfigError, match="'fp16' or 'bf16'"):
        Float16Config(dtype="fp8")
