"""What ``export_onnx`` checks the file on: the example and the first four calibration batches (a fifth is never
read), each batch refused by its position when it does not hold the model's inputs; outputs of any rank (a vector,
a scalar) compared as one row each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds

pytest.importorskip("onnxruntime")


class _Vector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)


class _Scalar(_Vector):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).sum()


def _batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, generator=g) for _ in range(n)]


def test_the_check_reads_the_first_four_calibration_batches_only(tmp_path):
    torch.manual_seed(0)
    model = _Vector().eval()
    result = ds.export_onnx(model, tmp_path / "a.onnx", example_input=torch.randn(3, 5),
                            calib_data=[*_batches(4), "not a batch"])  # fmt: skip
    assert result.cosine == pytest.approx(1.0) and result.top1_agreement == 1.0 and result.format == "fp32"
    with pytest.raises(ds.ExportError) as err:
        ds.export_onnx(model, tmp_path / "b.onnx", example_input=torch.randn(3, 5),
                       calib_data=[*_batches(3), "not a batch"])  # fmt: skip
    assert str(err.value) == "a calib_data batch must hold the model's 1 input tensors first"
    assert not (tmp_path / "b.onnx").exists()


def test_vector_and_scalar_outputs_are_checked_as_rows(tmp_path):
    torch.manual_seed(0)
    for model, name in ((_Vector().eval(), "v.onnx"), (_Scalar().eval(), "s.onnx")):
        result = ds.export_onnx(model, tmp_path / name, example_input=torch.randn(3, 5), calib_data=_batches(2))
        assert result.max_abs_error < 1e-5 and result.cosine == pytest.approx(1.0, abs=1e-6)
        assert result.top1_agreement == 1.0
