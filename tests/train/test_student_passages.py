"""benchmarks/heads_prune.py's packed passages (``with_passages``): long distillation inputs made of whole runs of the
training texts, added after them, as many as the share asks, or a clear refusal."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


def _texts(n: int, width: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Text i: [CLS], tokens 1000 + 100·i + j for j < its length − 2, [SEP], padding (lengths 3 to 7)."""
    ids, mask = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 5
        ids[i, 0], ids[i, length - 1], mask[i, :length] = 101, 102, 1
        ids[i, 1 : length - 1] = 1000 + 100 * i + torch.arange(length - 2)
    return ["doc"], ids, mask


def test_passages_are_whole_runs_of_training_texts_added_after_them():
    import heads_prune

    docs, ids, mask = _texts(60, 9)
    out_docs, out_ids, out_mask = heads_prune.with_passages((docs, ids, mask), 0.2, seed=3)
    assert out_docs is docs and len(out_ids) == 75  # 15 passages: a fifth of the whole
    assert torch.equal(out_ids[:60], ids) and torch.equal(out_mask[:60], mask)
    packed = out_ids[60:]
    assert (out_mask[60:] == 1).all() and (packed[:, 0] == 101).all() and (packed[:, -1] == 102).all()
    used: set[int] = set()
    for row in packed[:, 1:-1].tolist():
        text, pos = (row[0] - 1000) // 100, (row[0] - 1000) % 100
        assert pos == 0  # a passage starts at a text's first token
        for k, token in enumerate(row[1:], 1):
            nxt = (token - 1000) // 100, (token - 1000) % 100
            if nxt != (text, pos + 1):  # a new text begins only where the last one ended
                assert pos == 3 + text % 5 - 3 and nxt[1] == 0, (row, k)
                used.add(text)
                assert nxt[0] not in used  # a text is never in two passages, nor twice in one
            text, pos = nxt
        used.add(text)
    with pytest.raises(SystemExit, match=r"^60 texts make \d+ passages of 9 tokens, not 60: lower the share$"):
        heads_prune.with_passages((docs, ids, mask), 0.5)


def test_mixed_calibration_is_the_first_half_of_the_texts_then_as_many_packed_passages_in_batches_of_32():
    import heads_prune

    docs, ids, mask = _texts(300, 9)
    batches = heads_prune.calibration(None, (docs, ids, mask), "mixed", n=128)
    assert len(batches) == 4 and all(len(b["input_ids"]) == 32 for b in batches)
    for b, start in zip(batches[:2], (0, 32), strict=True):  # texts, cut to the batch's longest (7 tokens)
        assert b["input_ids"].shape[1] == 7
        assert torch.equal(b["input_ids"], ids[start : start + 32, :7])
        assert torch.equal(b["attention_mask"], mask[start : start + 32, :7])
    long = torch.cat([b["input_ids"] for b in batches[2:]])
    assert torch.equal(long, heads_prune.packed((docs, ids, mask), 64))  # passages, full width, no padding
    assert all((b["attention_mask"] == 1).all() for b in batches[2:])
    with pytest.raises(SystemExit, match=r"^calib is doc, broad, passages or mixed, not 'long'$"):
        heads_prune.calibration(None, (docs, ids, mask), "long")
