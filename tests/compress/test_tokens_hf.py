"""Token merging, token pruning and layer dropping on any local BERT directory (``hf:PATH``), not only on the
all-MiniLM-L6-v2 wheel (those tests skip without it): reducing nothing computes exactly the original model, and the
exported graphs — the reducing encoder and a layer-dropped student — agree with PyTorch in ONNX Runtime at another
batch, with padding (``deepslim.export_onnx`` of a two-input BERT: tests/export/test_export_hf.py)."""

import copy

import pytest
import torch

import deepslim as ds
from deepslim.compress.tokens import MergeTokensConfig, PruneTokensConfig, drop_layers_, merge_tokens_, prune_tokens_

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")
ort = pytest.importorskip("onnxruntime")

SEQ = 16


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 3-layer BERT saved as a Hugging Face directory, loaded through hf:PATH, and a padded batch of three."""
    path = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=SEQ)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    model = ds.load_model(f"hf:{path}").eval()
    ids = torch.randint(5, 120, (3, SEQ), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = 2
    ids[1, 9:], ids[2, 5:] = 0, 0  # [PAD]: the mask is read off the ids by IdsOnly
    return model, ids, (ids != 0).long()


def _ort(path, *inputs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return torch.from_numpy(sess.run(None, feed)[0])


def test_a_local_bert_reducing_nothing_computes_exactly_the_original(bert):
    model, ids, mask = bert
    with torch.no_grad():
        ref = model(ids, mask)
        merged = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=0))
        assert merged.reduction is not None and torch.equal(merged(ids, mask), ref)  # the reducing encoder ran
        assert torch.equal(prune_tokens_(merged, PruneTokensConfig(keep_ratio=1.0))(ids, mask), ref)
        kept = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=1.0, threshold=0.0))
        assert torch.equal(kept(ids[:1], mask[:1]), ref[:1])  # no padding in row 0: bit for bit
        torch.testing.assert_close(kept(ids, mask), ref, rtol=0, atol=1e-6)  # padding dropped, not changed
        reduced = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=4))(ids, mask)
    assert not torch.allclose(reduced[0], ref[0], atol=1e-3)  # while merging real tokens does change it


def test_a_merged_and_pruned_local_bert_exports_and_onnx_runtime_agrees_at_another_batch(bert, tmp_path):
    model, ids, mask = bert
    model = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=2))
    model = prune_tokens_(model, PruneTokensConfig(keep_ratio=0.8))
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(hf.IdsOnly(model), (ids[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch"}})  # fmt: skip
    with torch.no_grad():
        want = model(ids, mask)
    torch.testing.assert_close(_ort(path, ids), want, rtol=0, atol=1e-5)


def test_a_layer_dropped_student_exports_and_onnx_runtime_agrees_at_another_batch(bert, tmp_path):
    model, ids, mask = bert
    student = drop_layers_(copy.deepcopy(model), keep=[0, 2]).eval()
    assert len(student.encoder.encoder.layer) == 2 and student.encoder.config.num_hidden_layers == 2
    with torch.no_grad():
        want, teacher = student(ids, mask), model(ids, mask)
    assert not torch.allclose(want, teacher, atol=1e-3)  # a different model: the comparison below means something
    path = tmp_path / "student.onnx"
    torch.onnx.export(student, (ids[:2], mask[:2]), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}})  # fmt: skip
    torch.testing.assert_close(_ort(path, ids, mask), want, rtol=0, atol=1e-5)  # batch 3, not 2


@pytest.mark.parametrize("metric", ["keys_states", "states"])
def test_a_local_bert_merging_by_keys_and_states_exports_and_onnx_runtime_agrees(bert, tmp_path, metric):
    model, ids, mask = bert
    with torch.no_grad():
        ref = model(ids, mask)
        same = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=0, metric=metric))
        assert torch.equal(same(ids, mask), ref)  # r=0: the reducing encoder computes the original
        pads = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=(2, 1, 0), metric=metric))
        torch.testing.assert_close(pads(ids[2:], mask[2:]), ref[2:], rtol=0, atol=1e-5)  # 11 pads: only pads merge
        merged = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=3, metric=metric))
        want, by_keys = merged(ids, mask), merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=3))(ids, mask)
    assert not torch.allclose(want, by_keys, atol=1e-4)  # the metric merged other pairs
    path = tmp_path / "ks.onnx"
    torch.onnx.export(hf.IdsOnly(merged), (ids[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch"}})  # fmt: skip
    torch.testing.assert_close(_ort(path, ids), want, rtol=0, atol=1e-5)
