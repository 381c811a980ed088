"""The least-squares refit after head pruning runs in the order of computation: on BERT the feed-forward block (the
layer module itself) is found before the attention module inside it, yet runs after it, so it must be fitted after
the attention it reads from has been repaired."""

import pytest
import torch

from deepslim.compress.prune import _refit
from deepslim.compress.prune import heads as hp
from deepslim.compress.prune._head_scores import _model_inputs
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


@needs_hf
def test_forward_order_puts_each_bert_attention_before_its_feed_forward_block():
    model, x = hf.build("bert")
    blocks, _ = hp.find_blocks(model)
    kinds = [b.is_attention for b in blocks]
    assert kinds[:2] == [False, True]  # module order: a layer's feed-forward block first
    order = _refit.forward_order(model, [b.output for b in blocks], x, _model_inputs)
    assert sorted(order) == list(range(len(blocks)))
    assert [kinds[i] for i in order] == [True, False] * (len(blocks) // 2)
    assert [blocks[i].name for i in order][:2] == [blocks[1].name, blocks[0].name]
    assert not any(b.output._forward_pre_hooks for b in blocks)  # the order hooks are gone


@needs_hf
def test_prune_heads_refits_the_attention_output_before_the_feed_forward_output(monkeypatch):
    model, x = hf.build("bert")
    fitted = []  # the projections refitted, in order
    real = _refit.refit_

    def spy(m, layer, *args, **kw):
        fitted.append(layer)
        return real(m, layer, *args, **kw)

    monkeypatch.setattr(_refit, "refit_", spy)
    calib = [tuple(torch.cat([t, t.roll(1, 0)]) for t in x)]
    hp.prune_heads_(model, hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, round_to=4, refit=True),
                     calib_data=calib)
    layer0 = model.model.bert.encoder.layer[0]
    assert fitted[:2] == [layer0.attention.output.dense, layer0.output.dense]
    assert len(fitted) == 2 * len(model.model.bert.encoder.layer)
