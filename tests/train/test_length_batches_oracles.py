"""The student distillation's batches: texts of similar length together (chunks of the stable length order), each
batch cut to its longest text (dynamic padding) unless ``trim`` is off, the chunks reshuffled every epoch by the
seed — checked on seven texts of known lengths."""

from __future__ import annotations

import itertools

import torch

from deepslim.train.student import length_batches

LENGTHS = (3, 6, 1, 4, 2, 5, 3)  # stable order by length: rows 2, 4, 0, 6, 3, 5, 1 -> chunks [2,4,0] [6,3,5] [1]


def _texts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(7 * 6).reshape(7, 6)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in LENGTHS])
    return ids, mask


def test_batches_are_length_chunks_cut_to_their_longest_text_in_the_seeds_order():
    ids, mask = _texts()
    got = [(b[0][:, 0].tolist(), b[0].shape[1], b[1].shape) for b in itertools.islice(
        length_batches(ids, mask, 3, seed=1), 6)]  # fmt: skip
    assert got == [([36, 18, 30], 5, (3, 5)), ([6], 6, (1, 6)), ([12, 24, 0], 3, (3, 3)),  # first epoch
                   ([12, 24, 0], 3, (3, 3)), ([36, 18, 30], 5, (3, 5)), ([6], 6, (1, 6))]  # second, reshuffled
    first = next(length_batches(ids, mask, 3, seed=1))
    assert torch.equal(first[0], ids[[6, 3, 5], :5]) and torch.equal(first[1], mask[[6, 3, 5], :5])


def test_untrimmed_batches_keep_the_full_length_and_another_seed_another_order():
    ids, mask = _texts()
    full = [b[0].shape for b in itertools.islice(length_batches(ids, mask, 3, seed=1, trim=False), 3)]
    assert full == [(3, 6), (1, 6), (3, 6)]
    orders = {tuple(tuple(b[0][:, 0].tolist()) for b in itertools.islice(length_batches(ids, mask, 3, seed=s), 3))
              for s in range(6)}  # fmt: skip
    assert len(orders) > 1 and all(sorted(o) == [(6,), (12, 24, 0), (36, 18, 30)] for o in orders)
    assert [b[0].shape[0] for b in itertools.islice(length_batches(ids, mask, 7, seed=0), 2)] == [7, 7]
