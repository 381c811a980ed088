"""An activation point against PyTorch's own per-tensor fake quantization (u8, [0, 255]): the range it calibrates
(min and max, widened to hold 0), its codes in eager mode and while exporting (deepslim's operator, or PyTorch's with
the parameters as numbers), the straight-through gradient, and its states (observing, uncalibrated, calibrated)."""

from __future__ import annotations

import torch

from deepslim.compress.quantize._points import ActPoint, exporting
from deepslim.compress.quantize.observers import Calibration, Observer


def _calibrated(*batches: torch.Tensor) -> ActPoint:
    point = ActPoint()
    point.observer = Observer(Calibration.MINMAX, 8)
    for b in batches:
        assert torch.equal(point(b), b)  # observing passes the tensor through
    point.freeze()
    return point


def _torch_fake_quant(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero = int(min(max(round(-lo / scale), 0), 255))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def test_a_point_calibrated_on_signed_data_quantizes_as_pytorch_does():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g) * 2 - 0.5, torch.randn(64, generator=g) + 1
    point = _calibrated(a, b)
    lo, hi = float(torch.cat([a, b]).min()), float(torch.cat([a, b]).max())
    assert point.enabled and point.observer is None and point.zero.dtype == torch.int32
    assert float(point.scale) == torch.tensor((hi - lo) / 255).item()
    assert int(point.zero) == round(-lo / ((hi - lo) / 255))
    x = torch.linspace(lo - 1, hi + 1, 301)
    torch.testing.assert_close(point(x), _torch_fake_quant(x, lo, hi), rtol=0, atol=1e-6)
    assert point.extra_repr() == f"scale={float(point.scale):.4g}, zero={int(point.zero)}"


def test_a_point_calibrated_on_positive_data_keeps_zero_in_its_range():
    point = _calibrated(torch.tensor([0.5, 1.0, 3.0]))
    assert int(point.zero) == 0 and float(point.scale) == torch.tensor(3.0 / 255).item()
    x = torch.tensor([-1.0, 0.0, 0.01, 1.5, 3.0, 4.0])
    torch.testing.assert_close(point(x), _torch_fake_quant(x, 0.0, 3.0), rtol=0, atol=1e-6)
    assert float(point(x)[0]) == 0.0 and float(point(x)[-1]) == 3.0  # clipped at both ends


def test_exporting_runs_the_same_codes_with_either_operator():
    g = torch.Generator().manual_seed(1)
    point = _calibrated(torch.randn(100, generator=g))
    x = torch.randn(3, 7, generator=g) * 3
    eager = point(x)
    with exporting():
        torch.testing.assert_close(point(x), eager, rtol=0, atol=1e-6)
        assert point(x.t()).is_contiguous()
    point.export_params = (float(point.scale), int(point.zero))
    with exporting():
        torch.testing.assert_close(point(x), eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(point(x), eager, rtol=0, atol=0)  # outside the block: the plain operator again


def test_the_gradient_passes_straight_through_and_uncalibrated_points_do_nothing():
    point = _calibrated(torch.tensor([-1.0, 1.0]))
    x = torch.tensor([-0.3, 0.25, 0.9], requires_grad=True)
    y = point(x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    torch.testing.assert_close(y.detach(), point(x.detach()), rtol=0, atol=0)
    fresh = ActPoint()
    x = torch.tensor([0.123, -4.0])
    assert fresh(x) is x and not fresh.enabled and fresh.extra_repr() == "uncalibrated"
    fresh.observer = Observer(Calibration.MINMAX, 8)
    fresh.freeze()  # saw nothing: stays off
    assert not fresh.enabled and fresh.observer is None and fresh(x) is x
