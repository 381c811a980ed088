"""Token merging (ToMe), token pruning and layer dropping: the reductions on hand-made tokens, exactness when
nothing is reduced, padding handled as the attention mask says, and ONNX Runtime agreeing with PyTorch."""

import copy

import pytest
import torch
import torch.nn.functional as F

import deepslim as ds
from deepslim.compress.tokens import (
    MergeTokensConfig,
    PruneTokensConfig,
    drop_layers_,
    layer_plans,
    merge_tokens_,
    prune_tokens_,
)
from deepslim.compress.tokens._reduce import attention_received, bipartite_merge, prune, size_bias
from deepslim.compress.tokens.encoders import TokenVisionTransformer
from deepslim.errors import ConfigError, UnsupportedModelError
from tests.compress._minilm import minilm_batch


# -- the reductions on hand-made tokens ------------------------------------------------------------------------------
def test_bipartite_merge_averages_the_most_similar_pair_by_size():
    # A = tokens 0, 2, 4; B = tokens 1, 3. Token 2's key equals token 3's: they are the pair to merge.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 1, 0]]])
    x = torch.arange(10.0).reshape(1, 5, 2)
    size = torch.tensor([[1.0, 1, 3, 1, 1]])
    out, new_size = bipartite_merge(x, size, metric, r=1)
    # the kept tokens in their order, token 2 merged into token 3: (3·x2 + 1·x3) / 4 where token 3 was
    assert new_size.tolist() == [[1.0, 1.0, 4.0, 1.0]]
    expected = torch.stack([x[0, 0], x[0, 1], (3 * x[0, 2] + x[0, 3]) / 4, x[0, 4]])
    assert torch.allclose(out[0], expected)


def test_merging_keeps_the_total_size_and_the_size_weighted_sum_and_never_merges_cls():
    g = torch.Generator().manual_seed(0)
    x, metric = torch.randn(3, 17, 8, generator=g), torch.randn(3, 17, 4, generator=g)
    metric[:, 0] = metric[:, 1]  # CLS looks exactly like its neighbour, yet must stay
    size = torch.ones(3, 17)
    out, new_size = bipartite_merge(x, size, metric, r=5)
    assert out.shape == (3, 12, 8) and torch.allclose(new_size.sum(1), torch.full((3,), 17.0))
    assert torch.allclose((out * new_size[..., None]).sum(1), x.sum(1), atol=1e-5)
    assert torch.equal(out[:, 0], x[:, 0]) and (new_size[:, 0] == 1).all()
    assert bipartite_merge(x, size, metric, r=0)[0] is x
    assert bipartite_merge(x, size, metric, r=100)[0].shape[1] == 17 - 8  # at most (T - 1) // 2


def _merge_oracle(x, size, metric, r):
    """ToMe's bipartite matching for one sequence, written out with Python loops (the reference)."""
    cos = torch.nn.functional.normalize(metric, dim=-1) @ torch.nn.functional.normalize(metric, dim=-1).T
    a_tokens, b_tokens = range(2, len(x), 2), range(1, len(x), 2)
    best = {i: max(b_tokens, key=lambda j, i=i: cos[i, j]) for i in a_tokens}
    src = sorted(a_tokens, key=lambda i: -cos[i, best[i]])[:r]
    sums, sizes = {i: x[i] * size[i] for i in range(len(x))}, dict(enumerate(size.tolist()))
    for i in src:
        sums[best[i]] = sums[best[i]] + sums.pop(i)
        sizes[best[i]] += sizes.pop(i)
    kept = sorted(sums)
    return torch.stack([sums[i] / sizes[i] for i in kept]), torch.tensor([sizes[i] for i in kept])


@pytest.mark.parametrize("tokens, r", [(17, 5), (50, 8), (50, 24), (16, 3)])
def test_bipartite_merge_matches_a_loop_oracle_and_the_vit_variant_without_padding_rules(tokens, r):
    g = torch.Generator().manual_seed(tokens + r)
    x, metric = torch.randn(2, tokens, 6, generator=g), torch.randn(2, tokens, 5, generator=g)
    size = torch.randint(1, 4, (2, tokens), generator=g).float()
    for padding in (True, False):
        out, new_size = bipartite_merge(x, size, metric, r, padding=padding)
        for row in range(2):
            want, want_size = _merge_oracle(x[row], size[row], metric[row], r)
            assert torch.allclose(out[row], want, atol=1e-5) and torch.equal(new_size[row], want_size)


def test_merging_removes_padding_before_any_real_token():
    g = torch.Generator().manual_seed(1)
    x, metric = torch.randn(1, 12, 4, generator=g), torch.randn(1, 12, 4, generator=g)
    size = torch.tensor([[1.0] * 5 + [0.0] * 7])  # 5 real tokens, 7 padding (3 of them in set A: 6, 8, 10)
    out, new_size = bipartite_merge(x, size, metric, r=3)
    real = new_size > 0
    assert int(real.sum()) == 5 and torch.allclose(new_size.sum(), torch.tensor(5.0))
    kept = out[real]  # the five real tokens, untouched (merged only with size-0 padding)
    assert all(any(torch.allclose(k, t, atol=1e-6) for t in x[0, :5]) for k in kept)


def test_cls_never_merges_even_when_its_size_is_zero():
    g = torch.Generator().manual_seed(2)
    x, metric = torch.randn(1, 9, 4, generator=g), torch.randn(1, 9, 4, generator=g)
    size = torch.tensor([[0.0, 1, 1, 1, 1, 1, 0, 0, 0]])  # CLS (size 0) would otherwise go first, as padding does
    out, new_size = bipartite_merge(x, size, metric, r=3)
    real_cls = size.clone()
    real_cls[0, 0] = 1.0
    want, want_size = bipartite_merge(x, real_cls, metric, r=3)  # CLS never merges here: the same merges
    assert new_size[0, 0] == 0 and torch.equal(new_size[:, 1:], want_size[:, 1:])
    assert torch.allclose(out[:, 1:], want[:, 1:])


class _Merge(torch.nn.Module):
    def __init__(self, r, padding):
        super().__init__()
        self.r, self.padding = r, padding

    def forward(self, x, size, metric):
        return bipartite_merge(x, size, metric, self.r, padding=self.padding, unit=True)


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_the_exported_merge_computes_no_shapes_and_onnx_runtime_agrees_at_another_batch(padding, batch, tmp_path):
    import onnx
    import onnxruntime as ort

    g = torch.Generator().manual_seed(3)
    x, metric = torch.randn(batch, 20, 6, generator=g), F.normalize(torch.randn(batch, 20, 5, generator=g), dim=-1)
    size = torch.randint(1, 3, (batch, 20), generator=g).float()
    if padding:
        size[batch // 2, 13:] = 0.0  # a padded row (the only row at batch 1)
    path = tmp_path / "merge.onnx"
    names = ["x", "size", "metric"]
    torch.onnx.export(_Merge(6, padding), (x[:1], size[:1], metric[:1]), str(path), dynamo=False, opset_version=17,
                      input_names=names, dynamic_axes={k: {0: "b"} for k in names})  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "ConstantOfShape", "Expand"}  # token counts are constants; no shape arithmetic
    # the pooling weights are a product, not a select: a Where over the (T - r) x T matrix cost ~3x the two
    # elementwise operators in ONNX Runtime (session 15); what is left selects on (B, A, B) scores and (B, A) maxima
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Where") == (2 if padding else 1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy(), "size": size.numpy(), "metric": metric.numpy()})
    want = bipartite_merge(x, size, metric, 6, padding=padding, unit=True)
    assert torch.allclose(torch.from_numpy(got[0]), want[0], atol=1e-5)
    assert torch.equal(torch.from_numpy(got[1]), want[1])


def test_pruning_keeps_cls_and_the_most_attended_tokens_in_order():
    x = torch.arange(6.0).reshape(1, 6, 1)
    size = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    score = torch.tensor([[0.0, 0.3, 0.1, 0.4, 0.2, 0.9]])  # the padding token's score does not count
    out, new_size = prune(x, size, score, keep_ratio=0.5)
    assert out.flatten().tolist() == [0.0, 1.0, 3.0] and new_size.tolist() == [[1.0, 1.0, 1.0]]
    # with a threshold: below 0.9 × the uniform share 1/5 = 0.18 leave, here token 2 (and the padding token 5)
    kept, kept_size = prune(x, size, score, keep_ratio=1.0, threshold=0.9)
    assert kept.flatten().tolist() == [0.0, 1.0, 3.0, 4.0] and kept_size.tolist() == [[1.0] * 4]


def test_attention_received_counts_only_real_queries_and_the_size_bias_masks_padding():
    probs = torch.zeros(1, 1, 3, 3)
    probs[0, 0, :, 1] = 1.0  # everyone attends to token 1 ...
    probs[0, 0, 2] = torch.tensor([0.0, 0.0, 1.0])  # ... except the padding query, which looks at itself
    size = torch.tensor([[1.0, 2.0, 0.0]])
    assert attention_received(probs, size).tolist() == [[0.0, 1.0, 0.0]]
    bias = size_bias(size, torch.float32)
    assert bias.shape == (1, 1, 1, 3) and bias[0, 0, 0, 0] == 0 and torch.isclose(bias[0, 0, 0, 1], torch.log(
        torch.tensor(2.0))) and bias[0, 0, 0, 2] == torch.finfo(torch.float32).min  # fmt: skip


# -- configs ---------------------------------------------------------------------------------------------------------
def test_configs_validate_and_round_trip():
    assert MergeTokensConfig.from_dict(MergeTokensConfig(r=[1, 2]).to_dict()) == MergeTokensConfig(r=(1, 2))
    cfg = PruneTokensConfig(keep_ratio=(1.0, 0.5))
    assert PruneTokensConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="int >= 0"):
            MergeTokensConfig(r=bad)
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        PruneTokensConfig(keep_ratio=0.0)
    with pytest.raises(ConfigError, match="threshold"):
        PruneTokensConfig(keep_ratio=1.0, threshold=-0.5)


# -- the zoo's ViT ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return ds.create_model("vit_tiny", input_size=16, depth=3).eval()


def test_vit_with_r0_is_the_identity_and_merging_keeps_its_weights(vit):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = vit(x)
        same = merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=0))
        assert torch.equal(same(x), ref)
        merged = merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=(4, 2, 0)))
        out = merged(x)
    assert isinstance(merged, TokenVisionTransformer) and merged.state_dict().keys() == vit.state_dict().keys()
    assert out.shape == ref.shape and not torch.allclose(out, ref)
    assert [p.r for p in layer_plans(merged)] == [4, 2, 0]
    with pytest.raises(ConfigError, match="lists 2 layers, but the model has 3"):
        merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=(1, 2)))


def _ort(path, feed):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: feed.numpy()})[0])


def test_merged_and_pruned_vit_export_to_onnx_and_agree_with_pytorch(vit, tmp_path):
    x = torch.randn(3, 3, 16, 16)
    model = prune_tokens_(merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=3)), PruneTokensConfig(keep_ratio=0.8))
    torch.onnx.export(model, (x[:1],), str(tmp_path / "vit.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(_ort(tmp_path / "vit.onnx", x), model(x), atol=1e-4)


def test_drop_layers_keeps_the_named_blocks_and_refuses_bad_lists(vit):
    model = drop_layers_(copy.deepcopy(vit), keep=[0, 2])
    assert len(model.blocks) == 2
    assert torch.equal(model.blocks[1].mlp[0].weight, vit.blocks[2].mlp[0].weight)
    for bad in ([], [2, 0], [0, 0], [3]):
        with pytest.raises(ConfigError, match="keep lists distinct layer indices"):
            drop_layers_(copy.deepcopy(vit), keep=bad)


def test_models_without_a_token_encoder_are_refused_by_class():
    with pytest.raises(UnsupportedModelError, match="ResNet.*SentenceEncoder"):
        merge_tokens_(ds.create_model("resnet20"), MergeTokensConfig(r=2))


# -- all-MiniLM-L6-v2 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    texts = ["A man plays a guitar on a busy street corner.", "Birds sing at dawn.",
             "The river flooded the fields after heavy rain last night."]  # fmt: skip
    return minilm_batch(texts)


def test_minilm_with_r0_or_keep_1_is_exactly_the_original(minilm):
    model, ids, mask = minilm
    with torch.no_grad():
        ref = model(ids, mask)
        reduced = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=0))
        assert reduced.reduction is not None and torch.equal(reduced(ids, mask), ref)  # the token encoder ran
        assert torch.equal(prune_tokens_(reduced, PruneTokensConfig(keep_ratio=1.0))(ids, mask), ref)


def test_minilm_merging_padding_leaves_the_embeddings_and_merging_words_changes_them(minilm):
    model, ids, mask = minilm
    with torch.no_grad():
        ref = model(ids, mask)
        pads = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=(4, 3, 0, 0, 0, 0)))(ids, mask)
        words = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=5))(ids, mask)
    assert int((mask == 0).sum(1).min()) >= 15  # padding enough for 7 merges in each sentence
    assert (pads - ref).abs().max() < 1e-5
    cos = torch.nn.functional.cosine_similarity(words, ref)
    assert (cos < 0.999).any() and (cos > 0.3).all()


def test_minilm_token_reduction_exports_and_onnx_runtime_agrees(minilm, tmp_path):
    from deepslim.models.hf import IdsOnly

    model, ids, mask = minilm
    model = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=3))
    model = prune_tokens_(model, PruneTokensConfig(keep_ratio=0.9))
    with torch.no_grad():
        expected = model(ids, mask)
    path = tmp_path / "m.onnx"
    torch.onnx.export(IdsOnly(model), (ids[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch"}})  # fmt: skip
    assert not model.training  # the export left the model in eval mode
    assert torch.allclose(_ort(path, ids), expected, atol=1e-5)


def test_minilm_drop_layers_keeps_three_of_six(minilm):
    model, ids, mask = minilm
    merged = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=(1, 2, 3, 4, 5, 6)))
    student = drop_layers_(merged, keep=[0, 2, 5])
    assert len(student.encoder.encoder.layer) == 3 and student.encoder.config.num_hidden_layers == 3
    assert [p.r for p in layer_plans(student)] == [1, 3, 6]
    assert student.encoder.encoder.layer[2] is not model.encoder.encoder.layer[5]  # a copy was changed
    with torch.no_grad():
        assert student(ids, mask).shape == (3, 384)
