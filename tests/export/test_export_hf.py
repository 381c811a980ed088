"""ONNX export of Hugging Face models people bring: several inputs (input_ids + attention_mask), each batch dynamic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepslim as ds
from deepslim.errors import ExportError
from deepslim.export.onnx import ort_session
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


@pytest.fixture(scope="module")
def bert() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return hf.build("bert")


@needs_hf
def test_a_two_input_text_model_exports_with_every_input_batch_dynamic_and_matches_pytorch_at_another_batch(
        bert, tmp_path):  # fmt: skip
    model, (ids, mask) = bert
    result = ds.export_onnx(model, tmp_path / "bert.onnx", example_input=(ids, mask))
    assert result.format == "fp32" and result.dynamic_batch and not result.warnings
    assert result.cosine > 0.9999
    sess = ort_session(tmp_path / "bert.onnx", threads=1)
    inputs = sess.get_inputs()
    assert [i.name for i in inputs] == ["input", "input_1"]
    assert all(isinstance(i.shape[0], str) for i in inputs)  # symbolic batch on both
    ids3 = torch.randint(0, 100, (3, ids.shape[1]))
    mask3 = torch.ones_like(ids3)
    mask3[0, -4:] = 0  # the mask really reaches the file: padded rows differ from unpadded ones
    got = sess.run(None, {"input": ids3.numpy(), "input_1": mask3.numpy()})[0]
    with torch.no_grad():
        want = model(ids3, mask3).numpy()
        unmasked = model(ids3, torch.ones_like(ids3)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-4)
    assert np.abs(got[0] - unmasked[0]).max() > 20 * np.abs(got - want).max()


@needs_hf
def test_the_parity_check_feeds_every_input_of_the_calibration_batches(bert, tmp_path):
    model, (ids, mask) = bert
    other = torch.zeros_like(mask)
    other[:, :2] = 1
    calib = [(ids, other, torch.zeros(len(ids)))]  # (inputs..., labels)
    result = ds.export_onnx(model, tmp_path / "bert.onnx", example_input=(ids, mask), calib_data=calib)
    assert result.cosine > 0.9999
    with pytest.raises(ExportError, match="2 input tensors"):
        ds.export_onnx(model, tmp_path / "bad.onnx", example_input=(ids, mask), calib_data=[(ids,)])
    assert not (tmp_path / "bad.onnx").exists()


@needs_hf
def test_an_example_input_that_is_not_tensors_is_refused_with_a_deepslim_error(bert, tmp_path):
    model, (ids, _) = bert
    with pytest.raises(ExportError, match="tuple of tensors"):
        ds.export_onnx(model, tmp_path / "x.onnx", example_input=(ids, [1, 2]))
