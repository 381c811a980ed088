"""A tiny BERT sentence encoder for the distillation tests (random weights, built offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def bert_teacher(path: Path, layers: int) -> Any:
    """A ``layers``-deep BERT (hidden 32, 4 heads, vocabulary of 120 words) saved under ``path`` and loaded as a
    deepslim SentenceEncoder in eval mode. Wide initial weights: every layer changes the token states a lot, so
    dropping one is a real loss."""
    import transformers

    from deepslim.models import hf

    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40,
                                     initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    return hf.load_hf(path).eval()


def random_texts(n: int, width: int, min_length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random token-id rows of ``width`` (words of the teacher's vocabulary) with lengths from ``min_length`` to
    ``width``, zero past each length, and their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, width), generator=gen)
    lengths = torch.randint(min_length, width + 1, (n,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids * mask, mask
