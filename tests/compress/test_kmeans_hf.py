"""k-means, linear quantization's layer selection and the archive on Hugging Face layer kinds: GPT-2's ``Conv1D``
and weight_norm parametrized convolutions (wav2vec2)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import deepslim as ds
from deepslim.errors import UnsupportedModelError
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0))


@needs_hf
def test_kmeans_clusters_every_conv1d_layer_of_gpt2():
    model, x = hf.build("gpt2")
    conv1d = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv1d) >= 8
    with torch.no_grad():
        want = model(*x)
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    assert all(m.weight.unique().numel() <= 16 for m in conv1d.values())
    with torch.no_grad():
        assert _cos(model(*x), want) > 0.95


@needs_hf
def test_kmeans_bakes_a_weight_norm_convolution_and_clusters_it():
    model, x = hf.build("wav2vec2")
    normed = {n: m for n, m in model.named_modules() if parametrize.is_parametrized(m, "weight")}
    assert normed  # pos_conv_embed.conv carries weight_norm
    with torch.no_grad():
        want = model(*x)
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    for m in normed.values():
        assert m.weight.unique().numel() <= 16
        assert not any(type(p).__name__ == "_WeightNorm" for p in m.parametrizations.weight)
    with torch.no_grad():
        assert _cos(model(*x), want) > 0.9


def test_kmeans_refuses_a_hook_based_weight_norm_layer_by_name():
    model = nn.Sequential(nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        torch.nn.utils.weight_norm(model[0])
    with pytest.raises(UnsupportedModelError, match=r"^0: .*WeightNorm hook.*overrides=\{'0': None\}"):
        ds.cluster_(model, ds.KMeansConfig(bits=4))


@needs_hf
def test_int8_ptq_of_gpt2_names_the_conv1d_layers_it_leaves_in_float():
    model, x = hf.build("gpt2")
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, activation_bits=None))
    left = dict(ds.quantization_report(model).left)
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert all(n in left and "Conv1D" in left[n] for n in conv1d)


@needs_hf
def test_the_archive_of_a_weight_norm_model_stores_the_originals_and_decodes_to_the_same_outputs():
    model, x = hf.build("wav2vec2")
    blob = ds.encode(model, example_input=x[0])
    back = ds.decode(blob, model=copy.deepcopy(model))
    a, b = model.state_dict(), back.state_dict()
    assert any(".parametrizations.weight.original0" in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(back(*x), model(*x))
