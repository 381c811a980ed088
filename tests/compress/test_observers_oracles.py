"""Calibration observers on signed and on non-negative data, several batches, non-default percentiles: the ranges are
checked against torch.quantile, against a brute-force search that uses PyTorch's fake-quant kernel, and by what the
KL threshold must do to a heavy tail."""

import math

import numpy as np
import pytest
import torch

from deepslim.compress.quantize.observers import Calibration, Observer
from deepslim.errors import ConfigError


@pytest.fixture(scope="module")
def signed():
    gen = torch.Generator().manual_seed(0)
    body = torch.randn(3000, generator=gen) - 0.5
    return torch.cat([body, torch.tensor([-9.0, 12.0])])  # one outlier on each side, skewed to the negative


@pytest.fixture(scope="module")
def relu_like(signed):
    return signed.clamp_min(0.0)


def _observe(method, batches, **kwargs):
    obs = Observer(method, 8, **kwargs)
    for b in batches:
        obs.update(b)
    return obs


def test_minmax_spans_every_batch(signed):
    obs = _observe(Calibration.MINMAX, [signed[:1000], signed[1000:], torch.empty(0)])
    assert obs.range() == (-9.0, 12.0) and obs.count == 2 and obs.samples == []  # the empty batch is ignored


@pytest.mark.parametrize("p", [99.99, 90.0])
def test_percentile_range_is_torch_quantile_on_both_sides(signed, relu_like, p):
    lo, hi = _observe(Calibration.PERCENTILE, [signed[:1500], signed[1500:]], percentile=p).range()
    assert lo == pytest.approx(float(torch.quantile(signed, 1 - p / 100)), abs=1e-6)
    assert hi == pytest.approx(float(torch.quantile(signed, p / 100)), abs=1e-6)
    assert lo < 0.0 < hi
    lo, hi = _observe(Calibration.PERCENTILE, [relu_like], percentile=p).range()
    assert lo == 0.0 and hi == pytest.approx(float(torch.quantile(relu_like, p / 100)), abs=1e-6)


def _brute_force_mse(data):
    """The clipping fraction of [min, max] whose 8-bit affine fake-quant (PyTorch's kernel) has the least error."""
    lo, hi = float(data.min()), float(data.max())
    best, best_err = None, float("inf")
    for frac in torch.linspace(0.05, 1.0, 96, dtype=torch.float64).tolist():
        clo, chi = min(lo * frac, 0.0), max(hi * frac, 0.0)
        scale = (chi - clo) / 255
        zero = int(min(255, max(0, round(-clo / scale))))
        err = float((torch.fake_quantize_per_tensor_affine(data, scale, zero, 0, 255) - data).pow(2).mean())
        if err < best_err:
            best, best_err = (clo, chi), err
    return best


@pytest.mark.parametrize("which", ["signed", "relu_like"])
def test_mse_range_is_the_least_error_clipping(signed, relu_like, which):
    data = signed if which == "signed" else relu_like
    lo, hi = _observe(Calibration.MSE, [data[:2000], data[2000:]]).range()
    ref_lo, ref_hi = _brute_force_mse(data)
    assert lo == pytest.approx(ref_lo, rel=1e-5) and hi == pytest.approx(ref_hi, rel=1e-5)
    assert (lo < -1.0) if which == "signed" else (lo == 0.0)


def test_mse_range_of_strictly_positive_data_starts_at_zero():
    # sigmoid-like outputs in [0.4, 2.9]: the range is widened to include 0, never starts at a clipped minimum
    data = torch.rand(3000, generator=torch.Generator().manual_seed(3)) * 2.5 + 0.4
    lo, hi = _observe(Calibration.MSE, [data]).range()
    ref_lo, ref_hi = _brute_force_mse(data)
    assert lo == ref_lo == 0.0 and hi == pytest.approx(ref_hi, rel=1e-5)


def _reference_entropy_range(data, bits, bins=2048):
    """The KL range from its definition, the slow way. A histogram of the non-zero values over [min(x, 0), max(x, 0)];
    a candidate [a, b] keeps the bins whose centres lie in it and clips the rest into its first and last bins (p);
    the u8 grid over [a, b] (scale (b - a) / (2^bits - 1), integer zero point) sends each kept bin's centre to a level,
    and q_j is the kept count of j's level shared by the level's bins where p > 0; the divergence is sum p_j / N
    log(p_j / q_j) with N all non-zero samples (infinite if some q_j = 0). Ends are fractions i / bins of the extremes,
    i from 2^bits in steps of (bins - 2^bits) // 256: both scaled together, then the upper end, then the lower end."""
    x = data.double().numpy()
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    counts, edges = np.histogram(x[x != 0], bins=bins, range=(lo, hi))
    counts, edges = [int(c) for c in counts], [float(e) for e in edges]
    centres = [(edges[j] + edges[j + 1]) / 2 for j in range(bins)]
    total, levels = sum(counts), 2**bits

    def divergence(a, b):
        inside = [j for j in range(bins) if a <= centres[j] <= b]
        p = {j: counts[j] for j in inside}
        p[inside[0]] += sum(counts[: inside[0]])
        p[inside[-1]] += sum(counts[inside[-1] + 1 :])
        scale = (b - a) / (levels - 1)
        zero = min(max(round(-a / scale), 0), levels - 1)
        level = {j: min(max(round(centres[j] / scale) + zero, 0), levels - 1) for j in inside}
        kept, shared = [0] * levels, [0] * levels
        for j in inside:
            kept[level[j]] += counts[j]
            shared[level[j]] += p[j] > 0
        kl = 0.0
        for j in inside:
            if p[j] > 0:
                q = kept[level[j]] / shared[level[j]]
                kl += p[j] / total * math.log(p[j] / q) if q > 0 else math.inf
        return kl

    def best(candidates):
        kls = [divergence(a, b) for a, b in candidates]
        return candidates[kls.index(min(kls))]

    fractions = [i / bins for i in range(levels, bins + 1, max(1, (bins - levels) // 256))]
    a, b = best([(lo * f, hi * f) for f in fractions])
    b = best([(a, hi * f) for f in fractions if hi * f > 0 or hi == 0])[1]
    a = best([(lo * f, b) for f in fractions if lo * f < 0 or lo == 0])[0]
    return a, b


def test_entropy_threshold_of_relu_outputs_is_one_sided_with_all_levels(relu_like):
    # data starting exactly at 0 is non-negative: all 256 levels over [0, hi] (golden: bin 494 of 2048 over [0, 12],
    # what the slow reference finds too; TensorRT's search as published gave 1.5, which clipped 7% of the non-zero
    # values at 8 bits because the 69% of exact zeros decided it)
    lo, hi = _observe(Calibration.ENTROPY, [relu_like]).range()
    assert lo == 0.0 and hi == pytest.approx(494 * 12 / 2048, abs=1e-9)
    assert (lo, hi) == pytest.approx(_reference_entropy_range(relu_like, 8), abs=1e-9)


def test_entropy_threshold_of_a_half_normal_with_one_outlier_golden():
    # 8-bit one-sided: candidates every 7 bins from bin 256 (of 2048 over [0, 25]); the KL minimum is at bin 291
    gen = torch.Generator().manual_seed(4)
    data = torch.cat([torch.randn(4000, generator=gen).abs(), torch.tensor([25.0])])
    lo, hi = _observe(Calibration.ENTROPY, [data]).range()
    assert lo == 0.0 and hi == pytest.approx(291 * 25 / 2048, abs=1e-9)


@pytest.mark.parametrize(("bits", "lo"), [(8, 0.0), (11, 0.0), (12, -1.0)])
def test_entropy_keeps_the_whole_range_of_tailless_data_up_to_the_last_bin(bits, lo):
    # uniform data: the last candidate (all 2048 bins) wins; at 11/12 bits the levels fill the histogram
    data = torch.linspace(lo, 1.0, 4001)
    obs = Observer(Calibration.ENTROPY, bits)
    obs.update(data)
    assert obs.range() == (lo, 1.0)


def test_entropy_range_of_signed_data_ends_on_each_side_on_its_own(signed):
    # the outlier at 12 is clipped (the bulk ends near 3.5), the one at -9 is kept: at 8 bits the finer grid of
    # [-3.9, 3.6] does not pay for clipping it (golden: 620 of 2048 bins of the upper end, as the reference finds)
    lo, hi = _observe(Calibration.ENTROPY, [signed]).range()
    assert lo == -9.0 and 2.5 < hi < 4.5
    assert hi == pytest.approx(620 * 12 / 2048, abs=1e-9)
    assert (lo, hi) == pytest.approx(_reference_entropy_range(signed, 8), abs=1e-9)
    # a distribution without a tail keeps (nearly) its whole range
    uniform = torch.linspace(-1.0, 1.0, 4001)
    lo, hi = _observe(Calibration.ENTROPY, [uniform]).range()
    assert hi == pytest.approx(1.0, abs=0.01) and lo == pytest.approx(-1.0, abs=0.01)


def test_entropy_keeps_the_bright_pixels_of_a_normalized_image():
    # half the pixels are background (a spike at (0 - 0.286) / 0.353 = -0.81), the rest on the 1/255 lattice up to
    # 2.02: the grid over [-0.81, 2.02] holds the lattice one value per level. The search on |x| as published
    # returned (-0.81, 0.81) -- every bright pixel clipped, 2.4 pp of Fashion-MNIST accuracy lost at the input
    gen = torch.Generator().manual_seed(6)
    pixels = torch.cat([torch.zeros(3000), torch.randint(1, 256, (3000,), generator=gen).float()]) / 255
    data = (pixels - 0.2860) / 0.3530
    lo, hi = _observe(Calibration.ENTROPY, [data]).range()
    assert lo == pytest.approx(float(data.min()), rel=1e-6) and hi == pytest.approx(float(data.max()), rel=1e-6)
    assert (lo, hi) == pytest.approx(_reference_entropy_range(data, 8), abs=1e-9)


def test_entropy_is_not_fooled_by_where_the_mass_sits():
    # 4-bit, non-negative: the threshold must cover the bulk at 0..1 and drop the sparse tail up to 100
    gen = torch.Generator().manual_seed(1)
    data = torch.cat([torch.rand(20000, generator=gen), torch.rand(20, generator=gen) * 100])
    obs = Observer(Calibration.ENTROPY, 4)
    obs.update(data)
    lo, hi = obs.range()
    assert lo == 0.0 and 1.0 < hi < 30.0  # 2048 bins over 0..100: the bulk fills 21
    assert hi == pytest.approx(555 / 2048 * float(data.max()), rel=1e-7)  # golden: 555 of 2048 bins


def test_constant_data_and_no_data():
    for method in (c for c in Calibration if c not in (Calibration.AUTO, Calibration.DYNAMIC)):
        obs = Observer(method, 8)
        obs.update(torch.full((10,), 0.5))
        assert obs.range() == (0.5, 0.5)
        with pytest.raises(RuntimeError, match="^observer saw no data$"):
            Observer(method, 8).range()


def test_an_observer_refuses_the_calibrations_without_static_ranges():
    for method in (Calibration.AUTO, Calibration.DYNAMIC):
        with pytest.raises(ConfigError, match=f"not '{method.value}'"):
            Observer(method, 8)


def test_large_batches_are_subsampled_reproducibly():
    data = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    a, b = _observe(Calibration.PERCENTILE, [data]), _observe(Calibration.PERCENTILE, [data])
    assert a.samples[0].numel() == Observer.max_samples // 8 and torch.equal(a.samples[0], b.samples[0])
    assert a.range() == b.range() and (a.lo, a.hi) == (float(data.min()), float(data.max()))
    # golden: the subsample is drawn uniformly from all 100,000 positions with the observer's own seed 0
    idx = torch.randint(0, 100_000, (Observer.max_samples // 8,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.samples[0], data[idx])
    assert a.range() == pytest.approx((-3.809537649154663, 3.6920742988586426), rel=1e-7)


def test_a_percentile_range_always_contains_zero():
    # mostly positive data with a few negatives: the 10th percentile is positive, the range still starts at 0
    data = torch.cat([torch.rand(990, generator=torch.Generator().manual_seed(5)) + 0.5, -torch.ones(10)])
    lo, hi = _observe(Calibration.PERCENTILE, [data], percentile=90.0).range()
    assert lo == 0.0 and hi == pytest.approx(float(torch.quantile(data, 0.9)), abs=1e-6)


@pytest.fixture(scope="module")
def mostly_zeros():
    """A ReLU's output: 69% exact zeros, the rest the positive part of N(-1.5, 3^2), up to ~11."""
    return (torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 3 - 1.5).clamp_min(0.0)


@pytest.mark.parametrize("bits", [8, 4])
def test_exact_zeros_do_not_move_the_entropy_threshold(mostly_zeros, bits):
    # zero is a grid point of every candidate, so a ReLU's zeros are represented exactly whatever the threshold; the
    # search as published chose 0.087 of 11.2 at 4 bits (1.40 at 8), clipping 97% (76%) of the non-zero values
    assert float((mostly_zeros == 0).float().mean()) == pytest.approx(0.69, abs=0.01)
    lo, hi = _observe_bits(mostly_zeros, bits)
    nonzero = mostly_zeros[mostly_zeros > 0]
    assert (lo, hi) == _observe_bits(nonzero, bits)
    assert lo == 0.0 and hi == pytest.approx({8: 1740, 4: 1857}[bits] / 2048 * float(mostly_zeros.max()), rel=1e-9)
    if bits == 4:
        assert (lo, hi) == pytest.approx(_reference_entropy_range(mostly_zeros, bits), abs=1e-9)
    assert float((nonzero > hi).float().mean()) < 0.001  # a tail of ~0.1% of the values at most is clipped


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("start", [0.4, 5.0, 100.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_entropy_keeps_the_whole_range_of_tailless_data_far_from_zero(bits, start, sign):
    # uniform on [start, start + 2.5]: nothing to clip. As published, everything was clipped into the first occupied
    # bin for free ([0.4, 2.9] -> 0.402 at 8 bits; [100, 102.5] -> 100.05 with the zero fix alone)
    data = sign * (torch.rand(3000, generator=torch.Generator().manual_seed(5)) * 2.5 + start)
    top = float(data.abs().max())
    lo, hi = _observe_bits(data, bits)
    far = -lo if sign < 0 else hi
    assert top * (1 - 8 / 2048) <= far <= top  # within one candidate step (7 bins) of the top
    assert (hi if sign < 0 else lo) == 0.0  # the range always holds zero


def _observe_bits(data, bits):
    obs = Observer(Calibration.ENTROPY, bits)
    obs.update(data)
    return obs.range()
