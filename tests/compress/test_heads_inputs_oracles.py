"""Head pruning's calibration plumbing: which batches lose their labels before the model sees them, and the
refusals of sensitivity scoring (a model without floating-point outputs, no batch at all), word for word."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import heads as hp
from deepslim.errors import ConfigError


@pytest.mark.parametrize(("batch", "stripped"), [
    ((torch.ones(2, 3), torch.tensor([1, 0])), True),  # (inputs, class labels)
    ([torch.ones(2, 3), torch.tensor(1)], True),  # a list, a 0-d label
    (({"ids": torch.ones(2, 3)}, torch.tensor([1, 0])), True),  # dict inputs
    ((torch.ones(2, 3), torch.tensor([0.5, 1.0])), False),  # float second tensor: an input, not a label
    ((torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long)), False),  # 2-D: token ids, not labels
    ((torch.ones(2, 3), torch.tensor([1, 0]), torch.tensor([1, 0])), False),  # three items
    ((torch.ones(2, 3), 1), False),
    (("text", torch.tensor([1])), False),
])  # fmt: skip
def test_a_calibration_batch_loses_its_labels_only_when_it_is_an_inputs_labels_pair(batch, stripped):
    assert hp._model_inputs(batch) is (batch[0] if stripped else batch)


def _vit():
    torch.manual_seed(0)
    return ds.create_model("vit_tiny", num_classes=3, input_size=8, depth=1, dim=24, num_heads=3, mlp_dim=32).eval()


def test_sensitivity_refuses_a_model_without_floating_point_outputs_and_an_empty_calibration_set():
    model = _vit()
    blocks, _ = hp.find_blocks(model)

    class Argmax(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).argmax(-1)

    with pytest.raises(ConfigError, match=r"^sensitivity needs a model with floating-point outputs$"):
        hp.sensitivity(Argmax(model), blocks, [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ConfigError, match=r"^sensitivity importance needs calib_data with at least one batch of "
                                          r"model inputs$"):  # fmt: skip
        hp.sensitivity(model, blocks, [])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # gates removed


def test_a_gate_that_cannot_be_installed_leaves_none_of_the_others_on_the_model(monkeypatch):
    model = _vit()
    blocks, _ = hp.find_blocks(model)
    assert len(blocks) == 2  # the first block's gate goes on before the second one's fails

    def refuse(*_args, **_kw):
        raise RuntimeError("no hooks on this module")

    monkeypatch.setattr(blocks[1].output, "register_forward_pre_hook", refuse)
    with pytest.raises(RuntimeError, match="no hooks on this module"):
        hp.sensitivity(model, blocks, [torch.randn(2, 3, 8, 8)])
    assert not blocks[0].output._forward_pre_hooks
    before = model(torch.ones(1, 3, 8, 8))
    monkeypatch.undo()
    scores = hp.sensitivity(model, blocks, [torch.randn(2, 3, 8, 8)])
    assert [len(s) for s in scores] == [b.units for b in blocks]
    torch.testing.assert_close(model(torch.ones(1, 3, 8, 8)), before)  # nothing left behind either time


def test_the_plan_names_every_block_and_the_refit_and_summary_are_logged_per_block(caplog):
    import logging
    import re

    model = _vit()
    config = hp.HeadPruneConfig(head_ratio=0.34, ffn_ratio=0.5, refit=True)
    _, plan = hp.plan_head_pruning(model, config, [torch.randn(4, 3, 8, 8)])
    assert [b.name for b in plan.blocks] == ["blocks.0.attn", "blocks.0.mlp"]
    with caplog.at_level(logging.DEBUG, logger="deepslim.compress.prune.heads"):
        result = hp.prune_heads_(model, config, calib_data=[torch.randn(4, 3, 8, 8)])
    messages = [r.getMessage() for r in caplog.records if r.name == "deepslim.compress.prune.heads"]
    refits = [m for m in messages if m.startswith("refit ")]
    assert len(refits) == 2, messages
    assert all(re.fullmatch(r"refit blocks\.0\.(attn|mlp)\.\w+: relative residual \d+\.\d{4}", m) for m in refits)
    assert messages[-1] == f"head pruning: 3 -> 2 heads\n{result}"


def test_a_head_config_keeps_ignore_as_a_tuple_so_it_stays_hashable_and_round_trips():
    config = hp.HeadPruneConfig(head_ratio=0.5, ignore=["blocks.0.attn", "re:.*mlp"])
    assert config.ignore == ("blocks.0.attn", "re:.*mlp") and hash(config) == hash(config)
    assert hp.HeadPruneConfig.from_dict(config.to_dict()) == config
