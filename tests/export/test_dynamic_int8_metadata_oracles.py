"""The fused dynamic-int8 file of a BERT encoder carries the same metadata as every other export: deepslim's version
and the model's input preprocessing record (what ``deepslim bench``/``serve`` read to feed it)."""

from __future__ import annotations

import json

import pytest
import torch

import deepslim as ds

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _local_bert(path):
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    return ds.load_model(f"hf:{path}").eval()


def _batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 120, (n, 10), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1::2, 7:] = 0
    return ids, mask


def test_the_fused_int8_file_records_the_version_and_the_preprocessing(tmp_path):
    from deepslim.models._registry import PREPROCESSING_ATTR

    model = _local_bert(tmp_path / "bert")
    record = {"kind": "text", "max_length": 12, "note": "planted by the test"}
    setattr(model, PREPROCESSING_ATTR, record)
    calib = [{"input_ids": ids, "attention_mask": mask} for ids, mask in map(_batch, range(2))]
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, calibration="dynamic"), calib_data=calib)
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=1), calib_data=calib)
    assert result.format == "fused-int8"
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["deepslim.version"] == ds.__version__
    assert json.loads(props["deepslim.preprocessing"]) == record
