"""An example input the model itself refuses (a sequence past a BERT's positions) is the model's own one-line error
from ``export_onnx``, not the exporters' (whose messages carry terminal colour codes), and no file is written."""

import pytest
import torch

import deepslim as ds
from deepslim.errors import DataError

pytest.importorskip("transformers")

from tests.export.test_int8_dynamic_verbs import _local_bert  # noqa: E402  (2 layers, 40 positions)


def test_an_over_long_example_is_the_models_one_line_error_and_writes_nothing(tmp_path):
    model = _local_bert(tmp_path / "bert")
    ids = torch.ones(1, 41, dtype=torch.long)
    out = tmp_path / "m.onnx"
    with pytest.raises(DataError, match=r"^a sequence of 41 tokens is longer than the model's 40 positions") as err:
        ds.export_onnx(model, out, example_input=(ids, torch.ones_like(ids)))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bert"]
    ok = ds.export_onnx(model, out, example_input=(ids[:, :40], torch.ones_like(ids[:, :40])))
    assert out.is_file() and ok.max_abs_error < 1e-4
