"""Deep Compression's coding stages against golden values worked out by hand: Huffman code lengths and canonical codes
for a textbook distribution, the exact bits of an encoded stream, the code table's bytes, and relative-index streams
with gaps just below, at and above the filler symbol."""

import numpy as np
import pytest

from deepslim.compress.coding.huffman import (
    HuffmanTable,
    code_lengths,
    decode,
    encode,
    read_varint,
    table_from_bytes,
    table_to_bytes,
    varint,
)
from deepslim.compress.coding.sparse import decode_positions, encode_positions, stream_length
from deepslim.errors import ArchiveError

# CLRS's example (§16.3): f:5 e:9 c:12 b:13 d:16 a:45 -> a 1 bit, b c d 3 bits, e f 4 bits, 224 bits in all
CLRS = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}


def test_code_lengths_and_canonical_codes_of_the_textbook_distribution():
    table = code_lengths(np.array(list(CLRS)), np.array(list(CLRS.values())))
    assert table.symbols.tolist() == [0, 1, 2, 3, 4, 5] and table.lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert [format(int(c), f"0{n}b") for c, n in zip(table.codes(), table.lengths, strict=True)] == [
        "0", "100", "101", "110", "1110", "1111"]  # fmt: skip
    values = np.repeat(np.array(list(CLRS)), list(CLRS.values()))
    _, _, n_bits = encode(values)
    assert n_bits == 224


def test_canonical_order_is_by_length_then_symbol():
    table = code_lengths(np.array([-7, 3, 9, 40]), np.array([1, 50, 1, 2]))
    assert table.symbols.tolist() == [3, 40, -7, 9] and table.lengths.tolist() == [1, 2, 3, 3]
    assert table.codes().tolist() == [0b0, 0b10, 0b110, 0b111]


def test_encoded_bits_are_the_concatenated_codes():
    # symbols 3 (50x) -> '0', 40 -> '10', -7 -> '110', 9 -> '111'
    values = np.array([3] * 50 + [40, 40, -7, 9])
    stream = np.array([9, -7, 40, 3, 3, 40] + [3] * 48)  # the same counts in another order: the same length
    table, data, n_bits = encode(values)
    bits = "0" * 50 + "10" + "10" + "110" + "111"
    assert n_bits == len(bits) and data == int(bits.ljust(64, "0"), 2).to_bytes(8, "big")
    out = decode(table, data, n_bits, len(values))
    assert out.tolist() == values.tolist()
    table2, data2, n2 = encode(stream)
    assert n2 == len(bits) and decode(table2, data2, n2, len(stream)).tolist() == stream.tolist()


def test_a_stream_that_is_not_a_code_is_refused():
    table = HuffmanTable(np.array([1, 2, 3]), np.array([1, 2, 3], dtype=np.uint8))  # codes 0, 10, 110; 111 unused
    with pytest.raises(ArchiveError, match="invalid Huffman code at bit 1"):
        decode(table, bytes([0b01110000]), 4, 2)
    with pytest.raises(ArchiveError, match="empty code table"):
        decode(HuffmanTable(np.zeros(0, np.int64), np.zeros(0, np.uint8)), b"\x00", 1, 1)
    with pytest.raises(ArchiveError, match="cannot hold 9 symbols"):
        decode(table, b"\x00", 8, 9)
    assert decode(table, bytes([0b01011000]), 6, 3).tolist() == [1, 2, 3]  # 0 10 110


def test_varints_and_code_table_bytes_golden():
    out = bytearray()
    for v in (0, 127, 128, 300):
        varint(v, out)
    assert bytes(out) == bytes([0x00, 0x7F, 0x80, 0x01, 0xAC, 0x02])
    assert read_varint(bytes(out), 4) == (300, 6) and read_varint(bytes(out), 2) == (128, 4)
    table = HuffmanTable(np.array([5, -3, 130]), np.array([1, 2, 2], dtype=np.uint8))
    # k=3; first symbol -3 zigzag -> 5; deltas 8 and 125; then lengths in symbol order (-3, 5, 130) = 2, 1, 2
    raw = table_to_bytes(table)
    assert raw == bytes([3, 5, 8, 125, 2, 1, 2])
    back = table_from_bytes(raw)
    assert back.symbols.tolist() == [5, -3, 130] and back.lengths.tolist() == [1, 2, 2]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes([2, 0, 1, 0, 2]), "invalid code length"),  # a zero length
        (bytes([2, 0, 1, 25, 1]), "invalid code length"),  # deeper than MAX_BITS
        (bytes([3, 0, 1, 1, 1, 1, 1]), "not a prefix code"),  # three 1-bit codes: Kraft sum 1.5
        (bytes([2, 0, 1, 1]), "truncated or malformed"),  # a length missing
        (bytes([2, 0, 1, 1, 1, 9]), "truncated or malformed"),  # a byte too many
        (bytes([9, 0]), "declares 9 symbols in 2 bytes"),
        (bytes([0x80]), "truncated or malformed"),  # a varint that never ends
    ],
)
def test_corrupt_code_tables_are_refused_by_name(raw, message):
    with pytest.raises(ArchiveError, match=message):
        table_from_bytes(raw)


def test_a_full_two_symbol_table_is_accepted():
    table = table_from_bytes(bytes([2, 0, 1, 1, 1]))  # symbols 0 and 1, one bit each: Kraft sum exactly 1
    assert table.symbols.tolist() == [0, 1] and table.codes().tolist() == [0, 1]


@pytest.mark.parametrize(
    ("positions", "bits", "stream"),
    [
        ([0, 3, 20], 3, [0, 2, 7, 7, 2]),  # gaps 0, 2, 16 = 2 x 7 + 2 (filler 7)
        ([6], 3, [6]),  # gap 6: the largest real gap
        ([6, 13], 3, [6, 6]),  # two gaps of 6: no filler (6/7 + 6/7 would round to one)
        ([7], 3, [7, 0]),  # gap 7: one filler, then gap 0
        ([14, 15], 3, [7, 7, 0, 0]),
        ([1, 2, 3], 2, [1, 0, 0]),
        ([70000], 16, [65535, 4465]),
    ],
)
def test_relative_index_streams_golden(positions, bits, stream):
    encoded = encode_positions(np.array(positions), bits)
    assert encoded.tolist() == stream and stream_length(np.array(positions), bits) == len(stream)
    assert decode_positions(encoded, bits, positions[-1] + 1).tolist() == positions


def test_relative_index_errors():
    for bad in (1, 17):
        with pytest.raises(ValueError, match="index_bits must be in \\[2, 16\\]"):
            encode_positions(np.array([0]), bad)
    assert encode_positions(np.array([], dtype=np.int64), 4).tolist() == []
    with pytest.raises(ArchiveError, match="outside 0..7"):
        decode_positions(np.array([8]), 3, 100)
    with pytest.raises(ArchiveError, match="outside 0..7"):
        decode_positions(np.array([-1]), 3, 100)
    with pytest.raises(ArchiveError, match="past the end of its tensor \\(20 >= 20\\)"):
        decode_positions(np.array([0, 2, 7, 7, 2]), 3, 20)
    assert decode_positions(np.array([7, 7]), 3, 100).tolist() == []  # fillers alone hold no nonzero


@pytest.mark.parametrize("dtype", [np.uint16, np.uint64, np.int32])
def test_positions_and_streams_of_any_integer_dtype_code_alike(dtype):
    positions = np.array([0, 3, 20, 21], dtype=dtype)
    stream = encode_positions(positions, 3)
    assert stream.dtype == np.int64 and stream.tolist() == [0, 2, 7, 7, 2, 0]
    decoded = decode_positions(stream.astype(dtype), 3, 22)
    assert decoded.dtype == np.int64 and decoded.tolist() == [0, 3, 20, 21]
