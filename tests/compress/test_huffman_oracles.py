"""Huffman coding against a slow reference written from the textbook: code lengths from an explicit tree (with the
length limit's flattening), the encoded bits as concatenated code strings, every decode error by its message, and
the code table's corner cases (no symbol, one symbol, negative and 64-bit symbols)."""

import numpy as np
import pytest

from deepslim.compress.coding import huffman
from deepslim.compress.coding.huffman import (
    MAX_BITS,
    HuffmanTable,
    code_lengths,
    decode,
    encode,
    table_from_bytes,
    table_to_bytes,
)
from deepslim.errors import ArchiveError


def _tree_depths(counts):
    """Depth of each leaf of Huffman's tree, merging the two lightest nodes (ties: the older node first)."""
    nodes = [(int(c), i, [i]) for i, c in enumerate(counts)]
    depth = [0] * len(counts)
    serial = len(counts)
    while len(nodes) > 1:
        nodes.sort(key=lambda n: (n[0], n[1]))
        (c1, _, a), (c2, _, b) = nodes[0], nodes[1]
        for leaf in a + b:
            depth[leaf] += 1
        nodes = nodes[2:] + [(c1 + c2, serial, a + b)]
        serial += 1
    return depth


def _reference_lengths(counts):
    counts = [int(c) for c in counts]
    while max(depths := _tree_depths(counts)) > MAX_BITS:
        counts = [c // 2 + 1 for c in counts]
    return depths


def _reference_bits(table, values):
    code = {int(s): format(int(c), f"0{int(n)}b") for s, c, n in zip(table.symbols, table.codes(), table.lengths,
                                                                        strict=True)}  # fmt: skip
    return "".join(code[int(v)] for v in values)


def _fibonacci(n):
    out = [1, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return out[:n]


def test_fibonacci_counts_are_limited_to_24_bits_by_flattening():
    # 30 Fibonacci counts make a 29-deep tree; halving (+1) the counts until it fits gives the limited lengths (one
    # halving here: the small counts all become 1 or 2 and the deepest code 15 bits)
    counts = np.array(_fibonacci(30))
    symbols = np.arange(100, 130)
    assert max(_tree_depths(counts.tolist())) == 29
    table = code_lengths(symbols, counts)
    ref = _reference_lengths(counts.tolist())
    assert max(ref) == 15 and int(table.lengths.max()) == 15
    assert dict(zip(table.symbols.tolist(), table.lengths.tolist(), strict=True)) == dict(
        zip(symbols.tolist(), ref, strict=True))  # fmt: skip
    assert sum(2.0 ** -int(n) for n in table.lengths) == 1.0  # still a complete prefix code


@pytest.mark.parametrize("seed", [0, 1])
def test_lengths_equal_the_tree_and_bits_equal_the_concatenated_codes(seed):
    rng = np.random.default_rng(seed)
    values = rng.geometric(0.3, 3000) * rng.choice([-1, 1], 3000) * 1000  # ~25 symbols, codes up to ~14 bits
    symbols, counts = np.unique(values, return_counts=True)
    table, data, n_bits = encode(values)
    assert dict(zip(table.symbols.tolist(), table.lengths.tolist(), strict=True)) == dict(
        zip(symbols.tolist(), _reference_lengths(counts), strict=True))  # fmt: skip
    assert int(table.lengths.max()) > 8  # codes that straddle bytes
    bits = _reference_bits(table, values)
    assert n_bits == len(bits) and data == np.packbits(np.array(list(bits), dtype=np.uint8)).tobytes()
    assert decode(table, data, n_bits, len(values)).tolist() == values.tolist()
    again = table_from_bytes(table_to_bytes(table))
    assert again.symbols.tolist() == table.symbols.tolist() and again.lengths.tolist() == table.lengths.tolist()


def test_canonical_codes_grow_by_one_and_shift_when_the_length_grows():
    table = HuffmanTable(np.array([5, 6, 7, 8, 9]), np.array([2, 2, 2, 3, 3], dtype=np.uint8))
    assert table.codes().tolist() == [0b00, 0b01, 0b10, 0b110, 0b111]
    table = HuffmanTable(np.array([1, 2, 3]), np.array([1, 3, 3], dtype=np.uint8))  # a jump of two bits
    assert table.codes().tolist() == [0b0, 0b100, 0b101]
    assert HuffmanTable(np.zeros(0, np.int64), np.zeros(0, np.uint8)).codes().tolist() == []


def test_no_symbol_and_one_symbol():
    table, data, n_bits = encode(np.zeros(0, dtype=np.int64))
    assert len(table.symbols) == 0 and (data, n_bits) == (b"", 0) and decode(table, data, 0, 0).tolist() == []
    table, data, n_bits = encode(np.full(11, -4))  # one symbol still takes one bit: 11 zero bits
    assert table.symbols.tolist() == [-4] and table.lengths.tolist() == [1] and table.symbols.dtype == np.int64
    assert (data, n_bits) == (b"\x00\x00", 11) and decode(table, data, 11, 11).tolist() == [-4] * 11
    assert table_to_bytes(table) == bytes([1, 7, 1])  # k = 1, zigzag(-4) = 7, length 1


def test_decode_refuses_each_broken_stream_by_name():
    table = HuffmanTable(np.array([1, 2, 3]), np.array([1, 2, 2], dtype=np.uint8))  # 0, 10, 11
    with pytest.raises(ArchiveError, match=r"^Huffman stream truncated: 8 bits for 9$"):
        decode(table, b"\x00", 9, 1)
    with pytest.raises(ArchiveError, match=r"^Huffman stream ended after 2 of 3 symbols$"):
        decode(table, bytes([0b10110000]), 4, 3)  # 10 11 and nothing left
    with pytest.raises(ArchiveError, match=r"^Huffman stream has 2 bits left over after 2 symbols$"):
        decode(table, bytes([0b01000000]), 5, 2)  # 0 10, then 00 unread
    with pytest.raises(ArchiveError, match=r"^Huffman stream of 3 bits cannot hold 4 symbols"):
        decode(table, b"\x00", 3, 4)
    assert decode(table, bytes([0b01011000]), 5, 3).tolist() == [1, 2, 3]
    assert decode(table, b"\xff", 8, 4).tolist() == [3, 3, 3, 3]  # exactly n_bits == 8 * len(data)


def test_an_incomplete_code_refuses_the_unused_codes_at_the_end_of_the_window():
    table = HuffmanTable(np.array([7, 8]), np.array([1, 2], dtype=np.uint8))  # 0, 10; 11 is no code
    with pytest.raises(ArchiveError, match=r"^invalid Huffman code at bit 1$"):
        decode(table, bytes([0b01100000]), 3, 2)
    assert decode(table, bytes([0b10010000]), 5, 3).tolist() == [8, 7, 8]
    with pytest.raises(ArchiveError, match=r"^Huffman stream ends 1 bit inside its last code$"):
        decode(table, bytes([0b10010000]), 4, 3)  # 10 0 1|0: the last code runs past the stream's 4 bits
    table = HuffmanTable(np.arange(5), np.array([1, 3, 3, 3, 3], dtype=np.uint8))  # 0, 100, 101, 110, 111
    with pytest.raises(ArchiveError, match=r"^Huffman stream ends 2 bits inside its last code$"):
        decode(table, bytes([0b01000000]), 2, 2)  # 0 1|00


@pytest.mark.parametrize("symbols", [[-(1 << 63), -1, 0, (1 << 63) - 1], [-5, 3], [0]])
def test_table_bytes_round_trip_extreme_symbols(symbols):
    table = code_lengths(np.array(symbols, dtype=np.int64), np.arange(1, len(symbols) + 1))
    again = table_from_bytes(table_to_bytes(table))
    assert again.symbols.tolist() == table.symbols.tolist() and again.lengths.tolist() == table.lengths.tolist()


def test_a_table_with_a_zero_length_or_too_long_a_code_is_refused():
    for lengths in ([0, 1], [1, MAX_BITS + 1]):
        raw = bytes([2, 0, 1]) + bytes(lengths)  # symbols 0 and 1
        with pytest.raises(ArchiveError, match="^Huffman code table has an invalid code length$"):
            table_from_bytes(raw)
    raw = bytes([2, 0, 1, 1, MAX_BITS])
    assert table_from_bytes(raw).lengths.tolist() == [1, MAX_BITS]


def test_the_module_limit_is_24_bits():
    assert huffman.MAX_BITS == 24


def test_a_varint_that_runs_off_the_end_or_past_64_bits_is_refused_by_name():
    for raw in (b"", b"\x80\x80", b"\xff" * 10 + b"\x01"):  # empty; truncated; 11 bytes = 70 bits of shift
        with pytest.raises(ArchiveError, match=r"^Huffman code table truncated or malformed$"):
            huffman.read_varint(raw, 0)
    assert huffman.read_varint(b"\xff" * 9 + b"\x01", 0) == ((1 << 64) - 1, 10)  # 10 bytes still read (shift 63)


@pytest.mark.parametrize(("zigzag", "symbol"), [(2**64 - 2, 2**63 - 1), (2**64 - 1, -(2**63)), (2**64, None),
                                                (2**64 + 1, None)])  # fmt: skip
def test_a_table_symbol_just_inside_or_outside_64_bit_integers(zigzag, symbol):
    out = bytearray()
    huffman.varint(1, out)
    huffman.varint(zigzag, out)
    out.append(1)
    if symbol is None:
        with pytest.raises(ArchiveError, match=r"^Huffman code table holds a symbol outside 64-bit integers$"):
            table_from_bytes(bytes(out))
    else:
        assert table_from_bytes(bytes(out)).symbols.tolist() == [symbol]


def test_symbols_beyond_float_precision_round_trip_exactly():
    values = np.array([2**62 + 1, 2**62 + 3, 2**62 + 1, -(2**62) - 1])  # not representable as float64
    table, data, n_bits = encode(values)
    assert decode(table, data, n_bits, len(values)).tolist() == values.tolist()


def test_table_refusals_say_exactly_what_is_wrong():
    with pytest.raises(ArchiveError, match=r"^Huffman code table truncated or malformed$"):
        table_from_bytes(bytes([2, 0, 1, 1]))  # two symbols, one length byte
    with pytest.raises(ArchiveError, match=r"^Huffman code table is not a prefix code \(Kraft sum > 1\)$"):
        table_from_bytes(bytes([3, 0, 1, 1, 1, 1, 2]))  # lengths 1, 1, 2: 1/2 + 1/2 + 1/4 > 1
    empty = table_from_bytes(bytes([0]))
    assert empty.symbols.dtype == np.int64 and len(empty.symbols) == 0 and len(empty.lengths) == 0


def test_zero_symbols_decode_to_an_empty_int64_array_and_symbols_need_a_table():
    table = HuffmanTable(np.array([3]), np.array([1], dtype=np.uint8))
    out = decode(table, b"", 0, 0)
    assert out.dtype == np.int64 and out.shape == (0,)
    with pytest.raises(ArchiveError, match=r"^Huffman stream has symbols but an empty code table$"):
        decode(HuffmanTable(np.zeros(0, np.int64), np.zeros(0, np.uint8)), b"\x00", 1, 1)


def test_a_tree_exactly_24_deep_is_kept_as_it_is():
    counts = _fibonacci(25)  # depths 24, 24, 23, ..., 1: at the limit, not over it
    table = code_lengths(np.arange(25), np.array(counts))
    assert max(_tree_depths(counts)) == MAX_BITS
    assert dict(zip(table.symbols.tolist(), table.lengths.tolist(), strict=True)) == dict(
        enumerate(_tree_depths(counts)))  # fmt: skip


def test_code_lengths_of_no_symbols_is_an_empty_typed_table():
    table = code_lengths(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert table.symbols.dtype == np.int64 and table.lengths.dtype == np.uint8
    assert table.symbols.shape == (0,) and table.lengths.shape == (0,)
