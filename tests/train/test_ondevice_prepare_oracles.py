"""How finetune_ondevice converts a model for each mode before planning (deepslim.train.ondevice.finetune._prepare):
TinyTL adds lite residual branches exactly when the model has blocks for them, full and bias modes set exactly the
trainable tensors, the sparse mode refuses to run without a budget."""

import pytest
import torch

import deepslim as ds
from deepslim.errors import ConfigError
from deepslim.train.ondevice.convert import residual_blocks
from deepslim.train.ondevice.finetune import _prepare


def _mobilenet():
    torch.manual_seed(0)
    return ds.create_model("mobilenet_v2", width_mult=0.25, num_classes=10, input_size=32)


def test_tinytl_gives_every_residual_block_a_lite_branch_and_says_nothing():
    model = _mobilenet()
    blocks = residual_blocks(model)
    notes = _prepare(model, "tinytl", None, torch.randn(1, 3, 32, 32), None, "adam", 1)
    assert notes == [] and len(blocks) > 3
    assert all(hasattr(model.get_submodule(b), "lite_residual") for b in blocks)


def test_tinytl_on_a_model_without_residual_blocks_trains_biases_and_head_and_says_so():
    model = ds.create_model("lenet5")
    notes = _prepare(model, "tinytl", None, torch.randn(1, 1, 28, 28), None, "adam", 1)
    assert notes == ["no residual block (InvertedResidual, BasicBlock, Bottleneck) for a lite residual branch: "
                     "TinyTL trains the biases and the head"]  # fmt: skip
    assert not any(hasattr(m, "lite_residual") for m in model.modules())
    assert any(p.requires_grad for n, p in model.named_parameters() if n.endswith("bias"))


def test_full_mode_trains_every_tensor_and_bias_mode_only_the_biases():
    model = ds.create_model("lenet5")
    for p in model.parameters():
        p.requires_grad_(False)
    assert _prepare(model, "full", None, None, None, "adam", 1) == []
    assert all(p.requires_grad for p in model.parameters())
    _prepare(model, "bias", None, None, None, "adam", 1)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains and all(n.endswith("bias") for n in trains)


def test_the_sparse_mode_without_a_budget_is_refused_with_the_option_to_give():
    with pytest.raises(ConfigError, match=r"^--mode sparse chooses what to update under a memory budget: give "
                                          r"--budget memory=XMB$"):  # fmt: skip
        _prepare(ds.create_model("lenet5"), "sparse", None, None, None, "adam", 1)
