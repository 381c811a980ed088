"""What tokens are merged by (``MergeTokensConfig.metric``) and the oracles of merging for mean pooling: the
``keys_states`` similarity is the mean of the heads' key cosines and the normalized states' cosine, merging equal
tokens keeps the size-weighted mean pooling exactly, r=0 is the identity, and the exported graphs agree with
PyTorch in ONNX Runtime."""

import copy

import pytest
import torch
import torch.nn.functional as F

import deepslim as ds
from deepslim.compress.tokens import MergeTokensConfig, layer_plans, merge_tokens_
from deepslim.compress.tokens._reduce import bipartite_merge, merge_metric, unaffine
from deepslim.errors import ConfigError


def _cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def test_the_keys_metric_is_the_keys_averaged_over_heads():
    keys = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(merge_metric("keys", keys, None), keys.mean(1))


def test_keys_states_similarity_is_half_the_mean_head_key_cosine_and_half_the_state_cosine():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(1, 3, 4, 5, generator=g)  # 3 heads, 4 tokens
    normed = F.layer_norm(3 * torch.randn(1, 4, 6, generator=g) + 1, (6,))  # mean 0, mean square 1
    m = merge_metric("keys_states", keys, normed)
    assert m.shape == (1, 4, 3 * 5 + 6) and torch.allclose(m.norm(dim=-1), torch.ones(1, 4), atol=1e-5)
    for i, j in ((0, 1), (1, 3), (2, 2)):
        heads = sum(_cos(keys[0, h, i], keys[0, h, j]) for h in range(3)) / 3
        want = 0.5 * heads + 0.5 * _cos(normed[0, i], normed[0, j])
        assert abs(float(m[0, i] @ m[0, j]) - want) < 1e-5
    with pytest.raises(AssertionError, match="normalized token states"):  # an internal invariant (the encoders)
        merge_metric("keys_states", keys, None)


def test_the_states_metric_is_the_normalized_state_alone_as_a_unit_vector_whatever_the_keys():
    g = torch.Generator().manual_seed(5)
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, -2.0, 3.0, 1.0, 1.5, 4.0]))
        norm.bias.copy_(torch.arange(6.0))
        x = 3 * torch.randn(2, 4, 6, generator=g) + 1
        out = norm(x)
        m = merge_metric("states", torch.randn(2, 3, 4, 5, generator=g), out, norm)
        other = merge_metric("states", torch.randn(2, 3, 4, 5, generator=g), out, norm)
    assert m.shape == (2, 4, 6) and torch.equal(m, other)  # the keys play no part
    assert torch.allclose(m.norm(dim=-1), torch.ones(2, 4), atol=1e-4)
    want = F.layer_norm(x, (6,), eps=norm.eps)
    assert abs(float(m[1, 0] @ m[1, 3]) - _cos(want[1, 0], want[1, 3])) < 1e-4
    with pytest.raises(AssertionError, match="states metric needs the normalized token states"):
        merge_metric("states", torch.randn(1, 2, 4, 5), None)


def test_unaffine_undoes_a_layer_norms_scale_and_shift_and_reads_zero_where_the_scale_is_zero():
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, -2.0, 3.0, 1.0, 0.0, 4.0]))
        norm.bias.copy_(torch.arange(6.0))
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = unaffine(norm(x), norm)
    want = F.layer_norm(x, (6,), eps=norm.eps)
    want[..., 4] = 0.0
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(unaffine(x, torch.nn.LayerNorm(6, elementwise_affine=False)), x)


def test_merging_a_sequence_of_identical_tokens_keeps_its_size_weighted_mean_exactly():
    x = torch.tensor([[1.0, -2.0, 0.5]]).expand(2, 9, 3).contiguous()
    size = torch.tensor([[1.0, 2, 1, 3, 1, 1, 2, 1, 1], [1.0, 1, 1, 1, 1, 1, 1, 0, 0]])
    out, new_size = bipartite_merge(x, size, x, r=4)
    assert out.shape == (2, 5, 3) and torch.equal(new_size.sum(1), size.sum(1))
    real = new_size > 0
    assert torch.allclose(out[real], x[0, :1].expand(int(real.sum()), 3), rtol=0, atol=1e-6)


def test_size_weighted_pooling_after_merging_equal_tokens_is_the_unmerged_mean():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 5, 4, generator=g)
    # tokens 2, 4, 6 (set A) repeat tokens 1, 3, 5 (set B): the three merges ToMe makes are of equal tokens
    x = torch.cat([base[:, :1], base[:, 1:2], base[:, 1:2], base[:, 2:3], base[:, 2:3], base[:, 3:4],
                   base[:, 3:4], base[:, 4:5]], dim=1)  # fmt: skip
    size = torch.ones(1, 8)
    out, new_size = bipartite_merge(x, size, x, r=3)
    assert new_size.tolist() == [[1.0, 2.0, 2.0, 2.0, 1.0]]
    pooled = (out * new_size[..., None]).sum(1) / new_size.sum(1, keepdim=True)
    assert torch.allclose(pooled, x.mean(1), rtol=0, atol=1e-6)
    assert not torch.allclose(out.mean(1), x.mean(1), atol=1e-3)  # the unweighted mean would be wrong


def test_the_metric_is_validated_round_trips_and_reaches_every_layer_plan():
    cfg = MergeTokensConfig(r=(2, 0), metric="keys_states")
    assert MergeTokensConfig.from_dict(cfg.to_dict()) == cfg and MergeTokensConfig().metric == "keys"
    with pytest.raises(ConfigError, match="metric is one of keys, keys_states"):
        MergeTokensConfig(metric="values")  # type: ignore[arg-type]
    torch.manual_seed(0)
    vit = ds.create_model("vit_tiny", input_size=16, depth=2).eval()
    merge_tokens_(vit, cfg)
    assert [(p.r, p.metric, p.needs_states) for p in layer_plans(vit)] == [(2, "keys_states", True),
                                                                             (0, "keys_states", False)]  # fmt: skip


def _ort(path, feed):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: feed.numpy()})[0])


def test_a_vit_merging_by_keys_and_states_is_the_identity_at_r0_and_exports_agreeing_with_pytorch(tmp_path):
    torch.manual_seed(0)
    vit = ds.create_model("vit_tiny", input_size=16, depth=3).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = vit(x)
        assert torch.equal(merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=0, metric="keys_states"))(x), ref)
        model = merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=4, metric="keys_states"))
        want, by_keys = model(x), merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=4))(x)
    assert not torch.allclose(want, by_keys, atol=1e-4)  # the metric chose other pairs
    torch.onnx.export(model, (x[:1],), str(tmp_path / "vit.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    assert torch.allclose(_ort(tmp_path / "vit.onnx", x), want, atol=1e-4)


def test_a_merge_told_its_metric_is_unit_length_merges_exactly_as_one_that_normalizes_it():
    g = torch.Generator().manual_seed(4)
    x, metric = torch.randn(2, 21, 5, generator=g), torch.randn(2, 21, 7, generator=g)
    size = torch.randint(1, 3, (2, 21), generator=g).float()
    size[1, 15:] = 0.0  # padding in the second row
    unit = metric / metric.norm(dim=-1, keepdim=True)
    for padding in (True, False):
        want = bipartite_merge(x, size, 3 * metric, 6, padding=padding)
        got = bipartite_merge(x, size, unit, 6, padding=padding, unit=True)
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.equal(got[1], want[1])


def test_under_exact_ties_a_merge_still_joins_tokens_of_the_best_similarity_and_conserves_the_sizes():
    sign = torch.tensor([[1.0, 1, -1, 1, -1, -1, 1, 1, -1, 1, 1]])  # a one-channel metric: every cosine is +1 or -1
    x = torch.eye(11)[None]  # one-hot positions: the merged tokens' sums say which tokens each one holds
    out, new_size = bipartite_merge(x, torch.ones(1, 11), sign[..., None], r=3)
    members = (out * new_size[..., None])[0].round()  # (8, 11) counts
    assert out.shape == (1, 8, 11) and torch.equal(members.sum(0), torch.ones(11))  # each token in exactly one
    groups = [torch.nonzero(row).flatten().tolist() for row in members]
    joined = [g for g in groups if len(g) > 1]
    assert sum(len(g) - 1 for g in joined) == 3 and 0 in groups[0] and len(groups[0]) == 1  # CLS never merges
    for g in joined:  # A tokens (even positions) into one B token (odd) of their own sign: similarity +1, the best
        odd = [p for p in g if p % 2 == 1]
        assert len(odd) == 1 and all(p % 2 == 0 for p in g if p != odd[0])
        assert len({float(sign[0, p]) for p in g}) == 1


def test_the_metric_helper_refuses_an_unknown_kind_instead_of_computing_keys_and_states():
    keys, normed = torch.randn(1, 2, 5, 4), torch.randn(1, 5, 8)
    with pytest.raises(AssertionError, match="unknown merge metric"):
        merge_metric("values", keys, normed)
