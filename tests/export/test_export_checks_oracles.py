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


@pytest.mark.parametrize("bad, kind", [([], "list"), ("x", "str"), ((torch.zeros(2, 5), 3), "tuple")])
def test_an_example_that_is_not_tensors_is_refused_naming_what_it_is(tmp_path, bad, kind):
    with pytest.raises(ds.ExportError) as err:
        ds.export_onnx(_Vector().eval(), tmp_path / "m.onnx", example_input=bad)
    assert str(err.value) == ("example_input must be a tensor or a tuple of tensors (e.g. (input_ids, "
                              f"attention_mask)), got {kind}")  # fmt: skip


def test_a_scalar_among_several_inputs_and_a_4_bit_activation_are_refused(tmp_path):
    with pytest.raises(ds.ExportError) as err:
        ds.export_onnx(_Vector().eval(), tmp_path / "m.onnx", example_input=(torch.zeros(2, 5), torch.tensor(1.0)))
    assert str(err.value) == "every example input needs a batch dimension; got a 0-d tensor among several inputs"
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    ds.quantize_(model, ds.LinearQuantConfig(activation_bits=4, min_cosine=0), calib_data=_batches(1))
    with pytest.raises(ds.ExportError) as err:
        ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, 5))
    assert str(err.value) == ("integer export takes 8-bit activations; 0 has 4-bit (ONNX Runtime's integer kernels "
                              "are 8-bit)")  # fmt: skip
    assert not list(tmp_path.iterdir())
