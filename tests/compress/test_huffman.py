"""Huffman codec: round trips on random and degenerate streams (property-based), optimality, corrupt input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepslim.compress.coding.huffman import code_lengths, decode, encode
from deepslim.errors import ArchiveError


def _round_trip(values):
    table, data, n_bits = encode(values)
    out = decode(table, data, n_bits, len(values))
    assert np.array_equal(out, np.asarray(values, dtype=np.int64))
    return table, data, n_bits


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=300))
def test_round_trip_random(values):
    _round_trip(np.array(values, dtype=np.int64))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=500))
def test_round_trip_small_alphabets_and_kraft(values):
    table, _, n_bits = _round_trip(np.array(values))
    assert sum(2.0 ** -int(length) for length in table.lengths) <= 1.0 + 1e-12  # a prefix code
    counts = np.bincount(values)
    p = counts[counts > 0] / len(values)
    entropy = float(-(p * np.log2(p)).sum())
    if len(p) > 1:  # Huffman is within one bit per symbol of the entropy
        assert entropy * len(values) - 1e-9 <= n_bits <= (entropy + 1) * len(values)


def test_degenerate_streams():
    table, data, n_bits = _round_trip(np.array([], dtype=np.int64))
    assert (data, n_bits) == (b"", 0)
    table, data, n_bits = _round_trip(np.full(1000, 7))
    assert n_bits == 1000 and len(data) == 125  # one symbol: one bit each
    skewed = np.concatenate([np.zeros(100_000, dtype=np.int64), np.arange(1, 21)])
    _, _, n_bits = _round_trip(skewed)
    assert n_bits < 100_000 + 20 * 8  # the common symbol costs one bit


def test_lengths_are_limited_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 60:
        fib.append(fib[-1] + fib[-2])  # the worst case for code depth: unlimited, 59 bits
    table = code_lengths(np.arange(60), np.array(fib))
    assert int(table.lengths.max()) <= 24
    assert sum(2.0 ** -int(x) for x in table.lengths) <= 1.0 + 1e-12
    values = np.repeat(np.arange(27), fib[:27])  # 26 bits deep unlimited: the limit applies, and it round-trips
    table, _, _ = _round_trip(values)
    assert int(table.lengths.max()) <= 24


def test_corrupt_streams_raise_archive_error():
    table, data, n_bits = encode(np.array([0, 1, 2, 3, 0, 0, 1] * 10))
    with pytest.raises(ArchiveError, match="truncated"):
        decode(table, data[:2], n_bits, 70)
    with pytest.raises(ArchiveError, match="left over|ended"):
        decode(table, data, n_bits, 60)
    with pytest.raises(ArchiveError, match="ended after"):
        decode(table, data, n_bits, 80)
