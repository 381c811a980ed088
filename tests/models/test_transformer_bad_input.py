"""The zoo's own encoders refuse inputs their position embeddings do not fit, with the limit and what to do: a BERT
sequence longer than its 512 positions (was an IndexError inside the embedding lookup) and a ViT image of another
size or channel count than its patch grid (was a RuntimeError in the position addition or the patch convolution)."""

import copy

import pytest
import torch

import deepslim as ds
from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
from deepslim.errors import DataError


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return ds.create_model("bert_mini", depth=1, dim=64, num_heads=2, mlp_dim=128, vocab_size=100).eval()


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return ds.create_model("vit_tiny", depth=1, dim=32, num_heads=2, mlp_dim=64).eval()


@pytest.mark.parametrize("tokens", [513, 4096])
def test_a_bert_sequence_longer_than_its_positions_is_a_data_error_naming_the_limit(tokens):
    model = _bert()
    with pytest.raises(DataError, match=rf"a sequence of {tokens} tokens is longer than the model's 512 positions; "
                                        r"truncate to at most 512 tokens"):  # fmt: skip
        model(torch.randint(0, 100, (2, tokens)))


def test_a_bert_sequence_of_exactly_its_positions_still_runs_with_a_mask():
    model, ids = _bert(), torch.randint(0, 100, (2, 512))
    mask = torch.ones_like(ids)
    mask[1, 300:] = 0
    with torch.no_grad():
        out = model(ids, mask)
    assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 16, 16), (2, 3, 32, 30), (2, 1, 32, 32), (3, 32, 32)])
def test_a_vit_image_that_does_not_fit_its_patch_grid_is_a_data_error_with_the_size_to_resize_to(shape):
    model = _vit()
    with pytest.raises(DataError) as err:
        model(torch.randn(*shape))
    msg = str(err.value)
    assert msg.startswith("the model takes images of shape (B, 3, 32, 32) (its 8x8 grid of 4x4 patches")
    assert f"got {tuple(shape)}; resize the images to 32x32" in msg


def test_a_token_merging_vit_refuses_the_same_images_and_still_runs_its_own_size():
    vit = _vit()
    merged = merge_tokens_(copy.deepcopy(vit), MergeTokensConfig(r=2))
    with pytest.raises(DataError, match=r"resize the images to 32x32"):
        merged(torch.randn(1, 3, 64, 64))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert merged(x).shape == vit(x).shape == (2, 10)


def test_a_vit_of_another_input_size_takes_its_own_size():
    model = ds.create_model("vit_tiny", input_size=16, patch_size=4, depth=1, dim=32, num_heads=2, mlp_dim=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(DataError, match=r"\(B, 3, 16, 16\) \(its 4x4 grid of 4x4 patches.*resize the images to 16x16"):
        model(torch.randn(1, 3, 32, 32))
