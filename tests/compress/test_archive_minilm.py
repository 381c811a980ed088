"""The pretrained all-MiniLM-L6-v2 after dynamic int8 saves as a ``.dsz`` archive and as a ``.pt`` checkpoint and
loads back with the same embeddings: its architecture builds on the meta device (from its config) for the writers'
layer checks. An architecture record that names no model is refused when the archive is written, not when it is
read."""

import pytest
import torch

import deepslim as ds
from deepslim.models import ARCH_ATTR
from tests.compress._minilm import minilm_batch

SENTENCES = ["A man is playing a guitar.", "The weather is cold today.", "Two dogs run across the field.",
             "Stock prices fell sharply on Monday."]  # fmt: skip


@pytest.fixture(scope="module")
def quantized():
    model, ids, mask = minilm_batch(SENTENCES, seq_len=16)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[(ids, mask)])
    return model.eval(), ids, mask


@pytest.mark.slow
def test_the_architecture_of_minilm_builds_on_the_meta_device_with_the_loaded_models_tensors(quantized):
    model, _, _ = quantized
    with torch.device("meta"):
        fresh = ds.create_model("all-minilm-l6-v2")
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    assert all(v.is_meta for v in fresh.state_dict().values())
    assert shapes == {k: v.shape for k, v in ds.load_model("all-minilm-l6-v2").state_dict().items()}


@pytest.mark.slow  # ~15 s: quantizing MiniLM and decoding its 57 MB archive
@pytest.mark.parametrize("suffix", [".dsz", ".pt"])
def test_dynamic_int8_minilm_saved_and_loaded_gives_the_same_embeddings(quantized, tmp_path, suffix):
    model, ids, mask = quantized
    assert any(getattr(m, "dynamic", False) for m in model.modules())  # auto picked dynamic int8
    path = ds.save_model(model, tmp_path / f"m{suffix}", example_input=(ids, mask))
    loaded = ds.load_model(str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_an_architecture_record_that_names_no_model_is_refused_by_encode():
    model = ds.create_model("lenet5")
    setattr(model, ARCH_ATTR, {"name": "no-such-model"})
    with pytest.raises(ds.UnknownNameError, match="no-such-model"):
        ds.encode(model)
