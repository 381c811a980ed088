"""Learned token thresholds (LTP): the hard threshold on hand-made tokens, a threshold of 0 changing nothing, the
dynamic ONNX graph agreeing with PyTorch, the config round trip, and the soft learning moving the thresholds."""

import copy

import pytest
import torch

from deepslim.compress.tokens import MergeTokensConfig, PruneTokensConfig, layer_plans, merge_tokens_, prune_tokens_
from deepslim.compress.tokens._reduce import soft_threshold, threshold_index, uniform_share
from deepslim.errors import ConfigError
from deepslim.train import TokenThresholdConfig, kept_shares, learn_token_thresholds
from deepslim.train.student import EncoderKDConfig
from tests.compress._minilm import minilm_batch


def test_threshold_index_keeps_cls_and_tokens_at_or_above_the_threshold_in_order_and_masks_a_shorter_row():
    size = torch.tensor([[1.0, 1, 1, 1, 1, 0], [1.0, 1, 1, 1, 1, 1]])
    share = torch.tensor([[0.0, 0.8, 0.2, 1.5, 0.5, 3.0], [0.1, 0.9, 0.9, 0.1, 0.6, 0.7]])
    idx, new_size = threshold_index(size, share, 0.5)
    # row 0 keeps CLS, 1, 3, 4 (padding token 5 never counts); row 1 keeps CLS, 1, 2, 4, 5: five columns for both
    assert idx[1].tolist() == [0, 1, 2, 4, 5] and new_size[1].tolist() == [1.0] * 5
    assert idx[0, :4].tolist() == [0, 1, 3, 4] and new_size[0].tolist() == [1.0, 1, 1, 1, 0]
    idx0, size0 = threshold_index(size, share, 0.0)  # 0 keeps every present token, padding stays masked
    assert idx0.tolist() == [list(range(6))] * 2 and torch.equal(size0, size)


def test_uniform_share_and_the_soft_mask():
    received = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    size = torch.tensor([[1.0, 1.0, 0.5, 0.0]])
    assert torch.allclose(uniform_share(received, size), torch.tensor([[1.25, 0.625, 0.625, 0.0]]))
    soft = soft_threshold(torch.ones(1, 3), torch.tensor([[0.0, 0.5, 2.0]]), torch.tensor(0.5), temperature=0.1)
    assert soft[0, 0] == 1.0 and torch.isclose(soft[0, 1], torch.tensor(0.5)) and soft[0, 2] > 0.99999


def test_per_layer_thresholds_round_trip_and_bad_ones_are_refused():
    cfg = PruneTokensConfig(keep_ratio=1.0, threshold=[0.0, 0.3, 1.7])
    assert cfg.threshold == (0.0, 0.3, 1.7) and PruneTokensConfig.from_dict(cfg.to_dict()) == cfg
    assert TokenThresholdConfig.from_dict(TokenThresholdConfig(init=[0.1, 0.2]).to_dict()).init == (0.1, 0.2)
    for bad in (-0.1, float("inf"), True):
        with pytest.raises(ConfigError, match="threshold is a multiple of the uniform attention share"):
            PruneTokensConfig(keep_ratio=1.0, threshold=bad)
    with pytest.raises(ConfigError, match="threshold replaces keep_ratio"):
        PruneTokensConfig(keep_ratio=0.8, threshold=0.5)
    with pytest.raises(ConfigError, match="keep_target"):
        TokenThresholdConfig(keep_target=0.0)


@pytest.fixture(scope="module")
def minilm():
    texts = ["A man plays a guitar on a busy street corner while tourists stop to listen and take pictures.",
             "Birds sing at dawn.", "The river flooded the fields after heavy rain last night."]  # fmt: skip
    return minilm_batch(texts)


def test_a_threshold_of_zero_keeps_every_token_and_the_outputs(minilm):
    model, ids, mask = minilm
    pruned = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=1.0, threshold=0.0))
    with torch.no_grad():
        assert torch.equal(pruned(ids[:1], mask[:1]), model(ids[:1], mask[:1]))  # no padding: bit for bit
        assert torch.allclose(pruned(ids, mask), model(ids, mask), atol=1e-6)  # padding dropped, not changed
    assert kept_shares(pruned, ids, mask) == [1.0] * 6


def test_thresholds_refuse_merging_on_the_same_model(minilm):
    model = merge_tokens_(copy.deepcopy(minilm[0]), MergeTokensConfig(r=2))
    with pytest.raises(ConfigError, match="cannot be combined with merging"):
        prune_tokens_(model, PruneTokensConfig(keep_ratio=1.0, threshold=0.5))


def test_threshold_pruned_minilm_exports_a_dynamic_graph_that_agrees_with_pytorch(minilm, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from deepslim.models.hf import IdsOnly

    model, ids, mask = minilm
    pruned = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=1.0, threshold=(0.2, 0.4, 0.6, 0.6,
                                                                                             0.8, 0.8)))  # fmt: skip
    shares = kept_shares(pruned, ids, mask)
    assert shares[-1] < 0.8 and shares == sorted(shares, reverse=True)  # later layers keep fewer
    path = tmp_path / "ltp.onnx"
    torch.onnx.export(IdsOnly(pruned), (ids[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch"}})  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for i in range(3):  # batch 1: each text keeps its own number of tokens
            one = ids[i : i + 1, : int(mask[i].sum())]
            got = sess.run(None, {"input_ids": torch.nn.functional.pad(one, (0, 32 - one.shape[1])).numpy()})[0]
            assert torch.allclose(torch.from_numpy(got), pruned(one, torch.ones_like(one)), atol=1e-5)
        got = torch.from_numpy(sess.run(None, {"input_ids": ids.numpy()})[0])  # batch 3 with padding
        assert torch.allclose(got, pruned(ids, mask), atol=1e-5)


def test_learning_raises_the_thresholds_under_a_tight_budget_and_installs_them(minilm):
    model, ids, mask = minilm
    student = copy.deepcopy(model)
    result = learn_token_thresholds(student, model, ids.repeat(4, 1), mask.repeat(4, 1),
                                    TokenThresholdConfig(keep_target=0.2, penalty=10.0, init=0.0, threshold_lr=0.1,
                                                         train_weights=False),
                                    EncoderKDConfig(cpu_seconds=None, steps=3, batch_size=4))  # fmt: skip
    assert result["steps"] == 3 and len(result["thresholds"]) == 6 and min(result["thresholds"]) > 0.0
    assert [p.threshold for p in layer_plans(student)] == result["thresholds"]
    assert student.reduction.soft is None and not student.training
    assert torch.equal(student.encoder.encoder.layer[0].output.dense.weight,
                       model.encoder.encoder.layer[0].output.dense.weight)  # train_weights=False


def test_pooling_removed_tokens_keeps_the_embedding_closer_and_exports(minilm, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from deepslim.models.hf import IdsOnly

    model, ids, mask = minilm
    cfg = PruneTokensConfig(keep_ratio=1.0, threshold=(0.0, 0.0, 0.5, 0.5, 0.5, 0.5), pool_removed=True)
    assert PruneTokensConfig.from_dict(cfg.to_dict()) == cfg
    pooled = prune_tokens_(copy.deepcopy(model), cfg)
    dropped = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=1.0, threshold=cfg.threshold))
    same = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=1.0, threshold=0.0, pool_removed=True))
    with torch.no_grad():
        ref = model(ids, mask)
        cos = [torch.nn.functional.cosine_similarity(m(ids, mask), ref) for m in (pooled, dropped)]
        assert torch.allclose(same(ids, mask), ref, atol=1e-6)  # nothing removed: nothing extra pooled
    assert (cos[0] > cos[1]).all() and kept_shares(pooled, ids, mask)[-1] < 0.9
    path = tmp_path / "pooled.onnx"
    torch.onnx.export(IdsOnly(pooled), (ids[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch"}})  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(sess.run(None, {"input_ids": ids.numpy()})[0]), pooled(ids, mask),
                              atol=1e-5)  # fmt: skip
