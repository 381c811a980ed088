"""A token-merging ViT in bfloat16 computes in bfloat16 end to end (the size bias is added in the model's dtype, not
float32, which would promote the attention and break its product with the values) and matches the float32 model
to bfloat16's precision."""

import copy

import torch

import deepslim as ds
from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
from deepslim.compress.tokens._reduce import bipartite_merge, size_bias


def test_a_merging_vit_in_bfloat16_stays_in_bfloat16_and_matches_float32():
    torch.manual_seed(0)
    model = ds.create_model("vit_tiny", num_classes=3, input_size=16, depth=2, dim=32, num_heads=2, mlp_dim=32).eval()
    merge_tokens_(model, MergeTokensConfig(r=4))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_the_size_bias_is_log_size_in_the_asked_dtype_and_the_dtypes_minimum_for_removed_tokens():
    size = torch.tensor([[1.0, 2.0, 0.0]])
    bias = size_bias(size, torch.bfloat16)
    assert bias.dtype == torch.bfloat16 and bias.shape == (1, 1, 1, 3)
    assert bias[0, 0, 0, :2].float().tolist() == [0.0, torch.tensor(2.0).log().to(torch.bfloat16).item()]
    assert bias[0, 0, 0, 2].item() == torch.finfo(torch.bfloat16).min
    plain = size_bias(size[:, :2], torch.float16, padding=False)
    assert plain.dtype == torch.float16 and plain.flatten().tolist() == [0.0, torch.tensor(2.0).log().half().item()]


def test_bfloat16_merging_places_every_token_beyond_256_tokens():
    """bfloat16 holds integers only up to 256: the merge counts its output places in float32, so with 600 tokens
    every token still lands in exactly one row, r rows pool two tokens, and the unmerged ones come out unchanged and
    in order (places counted in bfloat16 gave sizes summing to 1,240)."""
    g = torch.Generator().manual_seed(0)
    t, r = 600, 8
    x = torch.randn(1, t, 8, generator=g).bfloat16()
    metric = torch.randn(1, t, 8, generator=g).bfloat16()
    out, size = bipartite_merge(x, torch.ones(1, t, dtype=torch.bfloat16), metric, r)
    assert out.dtype == size.dtype == torch.bfloat16 and out.shape == (1, t - r, 8)
    assert float(size.float().sum()) == t and int((size == 2).sum()) == r and int((size == 1).sum()) == t - 2 * r
    kept = out[0][size[0] == 1]
    match = (kept[:, None, :] == x[0][None, :, :]).all(-1)  # (kept, T): which input rows each kept row equals
    first = match.float().argmax(dim=1)
    assert bool(match.any(dim=1).all()) and bool((first[1:] > first[:-1]).all())
