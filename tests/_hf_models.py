"""Small Hugging Face models built offline from configs (random weights), each with an example input.

Used by the tests of how techniques behave on models people bring, and by ``benchmarks/generality.py``. Every builder
returns ``(model, example_input)``: the model is wrapped so that it takes positional tensors and returns one tensor
(its logits or last hidden state), in eval mode, with batch-norm statistics re-estimated on random inputs so that
batch norm does not act as an identity. Sizes are tiny: each builds and runs in well under a second on one core.
Call :func:`available` first: the builders need ``transformers``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

Builder = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
FAMILIES: dict[str, str] = {}  # name -> "convnet" | "vit" | "text" | "decoder" | "audio" | "segmentation"
_BUILDERS: dict[str, Builder] = {}


def available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class Logits(nn.Module):
    """Positional tensors in, one tensor out: ``model(pixel_values=x).logits`` (or the named output)."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], output: str = "logits"):
        super().__init__()
        self.model, self.inputs, self.output = model, inputs, output

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.inputs, args, strict=True)))
        return out[self.output] if isinstance(out, dict) else getattr(out, self.output)


def _register(name: str, family: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name], FAMILIES[name] = fn, family
        return fn

    return deco


def names(family: str | None = None) -> list[str]:
    return [n for n in _BUILDERS if family is None or FAMILIES[n] == family]


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    model, x = _BUILDERS[name]()
    _estimate_bn_(model, x)
    return model.eval(), x


def _estimate_bn_(model: nn.Module, x: tuple[torch.Tensor, ...]) -> None:
    """Re-estimate batch-norm statistics on a few random batches like ``x`` (fresh ones are mean 0, var 1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*[torch.randn_like(t) if t.is_floating_point() else t for t in x])
    model.eval()


def _image(size: int = 32, channels: int = 3) -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, channels, size, size),)


def _text(vocab: int = 100, length: int = 12) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, vocab, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, -3:] = 0
    return ids, mask


def _audio(samples: int = 1600) -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, samples),)


def _vision(cls_name: str, config_name: str, size: int = 32, **cfg) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import transformers as tf

    config = getattr(tf, config_name)(num_labels=5, **cfg)
    return Logits(getattr(tf, cls_name)(config), ("pixel_values",)), _image(size)


def _textcls(cls_name: str, config_name: str, output: str = "logits", **cfg) -> tuple[nn.Module, tuple]:
    import transformers as tf

    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)  # fmt: skip
    config = getattr(tf, config_name)(**{**base, **cfg})
    config.num_labels = 3
    return Logits(getattr(tf, cls_name)(config), ("input_ids", "attention_mask"), output), _text()


# -- convnets --------------------------------------------------------------------------------------------------------
@_register("resnet", "convnet")
def _resnet():
    return _vision("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                   depths=[1, 1], layer_type="basic")  # fmt: skip


@_register("resnet-bottleneck", "convnet")
def _resnet_bottleneck():
    return _vision("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[32, 64],
                   depths=[1, 1], layer_type="bottleneck")  # fmt: skip


@_register("convnext", "convnet")
def _convnext():
    return _vision("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[1, 1],
                   num_stages=2)  # fmt: skip


@_register("mobilenetv2", "convnet")
def _mobilenetv2():
    return _vision("MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.35, image_size=32)


@_register("efficientnet", "convnet")
def _efficientnet():
    return _vision("EfficientNetForImageClassification", "EfficientNetConfig", width_coefficient=0.1,
                   depth_coefficient=0.1, image_size=32, hidden_dim=128)  # fmt: skip


@_register("regnet", "convnet")
def _regnet():
    return _vision("RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                   depths=[1, 1], groups_width=8)  # fmt: skip


@_register("mobilenetv1", "convnet")
def _mobilenetv1():
    return _vision("MobileNetV1ForImageClassification", "MobileNetV1Config", depth_multiplier=0.25, image_size=32)


# -- vision transformers ---------------------------------------------------------------------------------------------
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)  # fmt: skip


@_register("vit", "vit")
def _vit():
    return _vision("ViTForImageClassification", "ViTConfig", **_VIT)


@_register("deit-distilled", "vit")
def _deit():
    return _vision("DeiTForImageClassificationWithTeacher", "DeiTConfig", **_VIT)


@_register("swin", "vit")
def _swin():
    return _vision("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                   depths=[1, 1], num_heads=[2, 4], window_size=4)  # fmt: skip


@_register("beit", "vit")
def _beit():
    return _vision("BeitForImageClassification", "BeitConfig", **_VIT)


@_register("dinov2", "vit")
def _dinov2():
    return _vision("Dinov2ForImageClassification", "Dinov2Config", **_VIT)


# -- text encoders ---------------------------------------------------------------------------------------------------
@_register("bert", "text")
def _bert():
    return _textcls("BertForSequenceClassification", "BertConfig")


@_register("distilbert", "text")
def _distilbert():
    return _textcls("DistilBertForSequenceClassification", "DistilBertConfig", dim=32, n_layers=2, n_heads=4,
                    hidden_dim=64)  # fmt: skip


@_register("roberta", "text")
def _roberta():
    return _textcls("RobertaForSequenceClassification", "RobertaConfig", pad_token_id=1)


@_register("albert", "text")
def _albert():
    return _textcls("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16)


@_register("electra", "text")
def _electra():
    return _textcls("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16)


# -- decoders (LM logits) --------------------------------------------------------------------------------------------
_DEC = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)  # fmt: skip


@_register("gpt2", "decoder")
def _gpt2():
    return _textcls("GPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2, n_head=4, n_positions=64)


@_register("llama", "decoder")
def _llama():
    return _textcls("LlamaForCausalLM", "LlamaConfig", **_DEC, num_key_value_heads=2)


@_register("mistral", "decoder")
def _mistral():
    return _textcls("MistralForCausalLM", "MistralConfig", **_DEC, num_key_value_heads=2)


@_register("qwen2", "decoder")
def _qwen2():
    return _textcls("Qwen2ForCausalLM", "Qwen2Config", **_DEC, num_key_value_heads=2)


# -- audio (convolutional front ends) --------------------------------------------------------------------------------
_W2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            classifier_proj_size=16, num_labels=3)  # fmt: skip


def _audiocls(cls_name: str, config_name: str, **cfg) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import transformers as tf

    return Logits(getattr(tf, cls_name)(getattr(tf, config_name)(**cfg)), ("input_values",)), _audio()


@_register("wav2vec2", "audio")
def _wav2vec2():
    return _audiocls("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", **_W2V)


@_register("hubert", "audio")
def _hubert():
    return _audiocls("HubertForSequenceClassification", "HubertConfig", **_W2V)


@_register("whisper-encoder", "audio")
def _whisper():
    import transformers as tf

    config = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                              num_mel_bins=16, max_source_positions=20, decoder_layers=1)  # fmt: skip
    model = Logits(tf.WhisperForAudioClassification(config), ("input_features",))
    return model, (torch.randn(2, 16, 40),)


# -- segmentation ----------------------------------------------------------------------------------------------------
@_register("segformer", "segmentation")
def _segformer():
    return _vision("SegformerForSemanticSegmentation", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1],
                   sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], decoder_hidden_size=32,
                   patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])  # fmt: skip
