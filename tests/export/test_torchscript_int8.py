"""Fused int8 export of BERT-style encoders: ONNX Runtime's attention fusion survives (TorchScript exporter), the int8
file agrees with PyTorch, and a model the optimizer cannot fuse is refused by name instead of written."""

import pytest
import torch
from torch import nn

from deepslim.errors import ExportError
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


def _tiny_encoder() -> nn.Module:
    import transformers as tf

    from deepslim.models.hf import SentenceEncoder

    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    config._attn_implementation = "eager"
    return SentenceEncoder(tf.BertModel(config, add_pooling_layer=False).eval(), max_positions=64)


def _batch(n: int = 8, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 100, (n, t), generator=torch.Generator().manual_seed(n))
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1::2, -4:] = 0
    return ids, mask


@needs_hf
def test_fused_int8_keeps_ort_attention_and_agrees_with_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepslim.export._torchscript import export_fused_int8

    model = _tiny_encoder()
    result = export_fused_int8(model, tmp_path / "m.onnx", example_input=_batch(2), check_inputs=[_batch()],
                               min_cosine=0.99)  # fmt: skip
    assert result.fused_ops.get("Attention") == 2  # one fused attention per layer
    assert result.path.is_file() and result.cosine_mean >= 0.99 and result.cosine_min <= result.cosine_mean
    import onnx

    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "Attention" in ops or "QAttention" in ops
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}  # integer kernels really run


@needs_hf
def test_an_unreachable_fidelity_target_is_an_error_and_no_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepslim.export._torchscript import export_fused_int8

    with pytest.raises(ExportError, match="cosine"):
        export_fused_int8(_tiny_encoder(), tmp_path / "m.onnx", example_input=_batch(2), min_cosine=1.01,
                          keep_float=1)  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_without_attention_is_refused_by_name(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepslim.export._torchscript import export_fused_int8

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(100, 16), nn.Linear(16, 8)

        def forward(self, ids, mask):
            return self.fc(self.emb(ids) * mask[..., None]).mean(1)

    with pytest.raises(ExportError, match="fused no attention in Bag"):
        export_fused_int8(Bag(), tmp_path / "m.onnx", example_input=_batch(2), num_heads=2, hidden_size=16)
    assert not (tmp_path / "m.onnx").exists()
