"""Token merging under CPU autocast (a bf16 distillation's passes): the matching, and the merge with it, run in
float32 as at float32 inference, so the student learns on the merges it will make there."""

import copy
import math

import pytest
import torch

from deepslim.compress.tokens._reduce import bipartite_merge, merge_metric

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
tokens = pytest.importorskip("deepslim.compress.tokens")


def _units(degrees: list[float]) -> torch.Tensor:
    """(1, T, 2) unit vectors at the given angles: their cosines are the merge's similarities."""
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])[None]


def test_a_near_tie_that_bfloat16_scores_break_the_other_way_merges_as_in_float32_under_autocast():
    """A tokens 2 and 4 match their partners 1 and 3 at cosines 0.9990 and 0.9995: float32 merges 4 (the higher);
    in bfloat16 both read 1.0 and the tie goes to 2. Under autocast the merge is float32's, to the bit."""
    metric = _units([200, 0, 2.56, 90, 88.19, 180, 135])  # CLS, then B and A tokens alternating
    best = (metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)).max(-1).values[0]
    low = metric.bfloat16()
    best_bf16 = (low[:, 0::2] @ low[:, 1::2].transpose(1, 2)).max(-1).values[0]
    assert best[2] > best[1] and best_bf16[1] == best_bf16[2]  # the case is a hard one
    x, size = torch.eye(7)[None], torch.ones(1, 7)  # each output row shows which input tokens it holds
    want, want_size = bipartite_merge(x, size, metric, 1, unit=True)
    assert want[0, 3, 3] > 0 and want[0, 3, 4] > 0  # float32: token 4 joins token 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_size = bipartite_merge(x, size, metric, 1, unit=True)
        padded, _ = bipartite_merge(x, torch.tensor([[1.0] * 6 + [0.0]]), metric, 2, unit=True)
    assert torch.equal(got > 0, want > 0), got  # the same assignment ...
    assert got.dtype == torch.float32 and torch.equal(got, want) and torch.equal(got_size, want_size)  # ... all float32
    want_padded, _ = bipartite_merge(x, torch.tensor([[1.0] * 6 + [0.0]]), metric, 2, unit=True)
    # the padding rules too: the padding token first, then float32's choice
    assert torch.equal(padded > 0, want_padded > 0) and torch.equal(padded, want_padded)


@pytest.mark.parametrize("kind", ["keys", "keys_states", "states"])
def test_the_merge_metric_under_autocast_is_the_float32_one_of_the_same_keys(kind):
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 4, 9, 8, generator=gen).bfloat16()  # (B, H, T, Dh) as an autocast key projection gives them
    normed = torch.nn.functional.layer_norm(torch.randn(2, 9, 32, generator=gen), (32,))
    want = merge_metric(kind, keys.float(), normed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = merge_metric(kind, keys, normed)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_a_traced_merging_encoder_under_autocast_keeps_its_members_rows_summing_to_one(tmp_path):
    """The members (which input tokens each merged token stands for, the token targets' weights) ride along with the
    states through the merge: in float32 under autocast their rows sum to 1 (in bfloat16 they were off by ~0.4 %)."""
    from tests.train._bert import bert_teacher, random_texts

    model = tokens.merge_tokens_(copy.deepcopy(bert_teacher(tmp_path, 4)), tokens.MergeTokensConfig(r=3))
    ids, mask = random_texts(8, 16, 16, seed=3)  # no padding: every row is a real token
    model.reduction.trace = True
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, mask)
    for _, _, members in model.reduction.traced:
        assert (members.float().sum(-1) - 1).abs().max() < 1e-6 and members.dtype == torch.float32
    assert [m.shape[1] for _, _, m in model.reduction.traced] == [13, 10, 7, 4]
