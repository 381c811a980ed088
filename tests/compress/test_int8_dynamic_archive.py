"""A dynamic-int8 BERT encoder (``calibration='dynamic'``, what ``'auto'`` gives it) survives ``save_model`` as a
``.pt`` checkpoint and as a ``.dsz`` archive: the reloaded model has the same dynamic layers, the same fp32 and
scaled channels and the same outputs, and its report still says dynamic; a malformed channel record is refused."""

import pytest
import torch

import deepslim as ds
from deepslim.compress.quantize import QuantMixin
from deepslim.errors import ArchiveError, ModelLoadError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")


def _local_bert(path):
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False)
    with torch.no_grad():  # one wide GELU channel and one wide LayerNorm channel: splits and scales are chosen
        bert.encoder.layer[0].intermediate.dense.weight[7] *= 30.0
        bert.encoder.layer[0].intermediate.dense.bias[7] = 20.0
        bert.encoder.layer[1].attention.output.LayerNorm.weight[5] = 25.0
    bert.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    factory = path / "factory.py"  # a file.py:factory records the architecture, so that loading rebuilds it
    factory.write_text(f"import deepslim\n\ndef make():\n    return deepslim.load_model('hf:{path}')\n")
    return ds.load_model(f"{factory}:make").eval(), f"{factory}:make"


def _batch(seed, n=6, t=12):
    ids = torch.randint(5, 120, (n, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1::2, 8:] = 0
    return ids, mask


def _dynamic_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin) and m.dynamic}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    model, arch = _local_bert(tmp_path_factory.mktemp("bert"))
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, split_outliers=1, split_inputs=0, scale_inputs=2),
                 calib_data=[_batch(s) for s in range(2)])  # fmt: skip
    return model, arch


@pytest.mark.parametrize("suffix", [".pt", ".dsz"])
def test_a_dynamic_bert_saved_and_loaded_back_computes_exactly_the_same_outputs(quantized, tmp_path, suffix):
    quantized, arch = quantized
    path = ds.save_model(quantized, tmp_path / f"m{suffix}", example_input=_batch(0, n=1))
    loaded = ds.load_model(str(path), arch=arch).eval()
    before, after = _dynamic_layers(quantized), _dynamic_layers(loaded)
    assert len(before) == 12 and after.keys() == before.keys()
    for name, m in before.items():
        got = after[name]
        for key in ("split_in", "split_out", "in_scale"):
            a, b = getattr(m, key), getattr(got, key)
            assert (a is None and b is None) or torch.equal(a, b), (name, key)
        assert got.split_rows == m.split_rows
    assert after["encoder.encoder.layer.0.output.dense"].split_in.tolist() == [7]  # the planted channels survive
    assert after["encoder.encoder.layer.1.intermediate.dense"].in_scale[5] > 1
    ids, mask = _batch(42, n=5)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), quantized(ids, mask))
    assert ds.quantization_report(loaded).calibration == "dynamic"
    assert ds.quantization_report(loaded).quantized == ds.quantization_report(quantized).quantized


def test_a_dynamic_layer_record_with_a_channel_outside_the_weight_is_refused(quantized, tmp_path):
    from deepslim.compress.coding.archive import _build
    from deepslim.compress.coding.state import layer_kinds

    quantized, arch = quantized
    kinds = layer_kinds(quantized)
    name = "encoder.encoder.layer.0.output.dense"
    assert kinds[name]["dynamic"] is True and kinds[name]["split_in"] == [7]
    kinds[name] = {**kinds[name], "split_in": [64]}  # the down projection reads 64 channels: 0..63
    fresh = ds.load_model(arch).eval()
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    with pytest.raises((ArchiveError, ModelLoadError), match=r"split_in .*outside"):
        _build(fresh, kinds, shapes)
