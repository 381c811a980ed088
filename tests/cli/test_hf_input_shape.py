"""``--input-shape B,T`` on an ``hf:`` BERT directory: the CLI draws token ids (not a float tensor) for profile and
export; a shape that is not (batch, tokens) or longer than the positions exits 2 in one line."""

import json

import numpy as np
import pytest
import torch

import deepslim as ds
from deepslim.cli import main

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from tests.export.test_int8_dynamic_verbs import _local_bert  # 2 layers, vocabulary 120, 40 positions

    path = tmp_path_factory.mktemp("bert")
    _local_bert(path)
    return path


def test_profile_and_export_take_token_ids_of_the_given_shape(bert, tmp_path, capsys):
    assert main(["-q", "profile", f"hf:{bert}", "--input-shape", "1,16", "--json"]) == 0
    profiled = json.loads(capsys.readouterr().out)
    model = ds.load_model(f"hf:{bert}").eval()
    ids = model.input_for_shape((1, 16))
    assert ids.dtype == torch.long and ids.shape == (1, 16) and int(ids.min()) >= 0 and int(ids.max()) < 120
    assert profiled["macs"] == ds.profile(model, ids).macs > 0
    out = tmp_path / "m.onnx"
    assert main(["-q", "export", f"hf:{bert}", "--input-shape", "2,16", "-o", str(out)]) == 0, capsys.readouterr().err
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = model.input_for_shape((2, 16))
    (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(batch).numpy(), atol=1e-5)


@pytest.mark.parametrize(("shape", "message"), [("1,3,16", r"token ids of shape \(batch, tokens\)"),
                                                ("1,41", "41 tokens is longer than the model's 40 positions")])
def test_a_shape_that_is_not_batch_by_tokens_within_the_positions_exits_2(bert, shape, message, capsys):
    assert main(["-q", "profile", f"hf:{bert}", "--input-shape", shape]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err
