"""Canonical Huffman coding of integer symbol streams (the last stage of Deep Compression).

Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 1952; canonical codes (Schwartz &
Kallick 1964) so that a code table is just each symbol's code length. Code lengths are limited to ``MAX_BITS`` by
flattening the frequencies and rebuilding, as zlib does. Encoding is vectorized with numpy; decoding walks the stream
with a lookup table indexed by the next ``max_length`` bits.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

import numpy as np

from deepslim.errors import ArchiveError

MAX_BITS = 24


@dataclass(frozen=True)
class HuffmanTable:
    symbols: np.ndarray  # (k,) int64, in canonical order (by length, then symbol)
    lengths: np.ndarray  # (k,) uint8

    def codes(self) -> np.ndarray:
        """Canonical codes: consecutive integers within a length, shifted left when the length grows."""
        codes = np.zeros(len(self.lengths), dtype=np.int64)
        code, prev = 0, int(self.lengths[0]) if len(self.lengths) else 0
        for i, length in enumerate(self.lengths.tolist()):
            code <<= length - prev
            codes[i], prev = code, length
            code += 1
        return codes


def code_lengths(symbols: np.ndarray, counts: np.ndarray) -> HuffmanTable:
    """Optimal (length-limited) code lengths for symbols with the given counts, as a canonical table."""
    counts = counts.astype(np.int64)
    if len(symbols) == 0:
        return HuffmanTable(np.zeros(0, np.int64), np.zeros(0, np.uint8))
    if len(symbols) == 1:
        return HuffmanTable(symbols.astype(np.int64), np.ones(1, np.uint8))  # one symbol still needs one bit
    while True:
        lengths = _lengths(counts)
        if lengths.max() <= MAX_BITS:
            break
        counts = counts // 2 + 1  # flatten the distribution until the deepest code fits
    order = np.lexsort((symbols, lengths))
    return HuffmanTable(symbols[order].astype(np.int64), lengths[order].astype(np.uint8))


def _lengths(counts: np.ndarray) -> np.ndarray:
    heap: list[tuple[int, int, tuple[int, ...]]] = [(int(c), i, (i,)) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    depth = np.zeros(len(counts), dtype=np.int64)
    tie = len(counts)
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, b = heapq.heappop(heap)
        depth[list(a + b)] += 1
        heapq.heappush(heap, (c1 + c2, tie, a + b))
        tie += 1
    return depth


def encode(values: np.ndarray) -> tuple[HuffmanTable, bytes, int]:
    """(table, packed bits, number of bits) for a 1-D array of integer symbols."""
    values = np.asarray(values).astype(np.int64).ravel()
    symbols, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    table = code_lengths(symbols, counts)
    if len(values) == 0:
        return table, b"", 0
    # per value: its code and length (via the symbol's position in the canonical table)
    position = np.empty(len(symbols), dtype=np.int64)
    position[np.searchsorted(symbols, table.symbols)] = np.arange(len(symbols))
    codes, lengths = table.codes()[position][inverse], table.lengths.astype(np.int64)[position][inverse]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    total = int(lengths.sum())
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(lengths.max())):  # bit j (from the most significant) of every code at once
        has = lengths > j
        bits[starts[has] + j] = (codes[has] >> (lengths[has] - 1 - j)) & 1
    return table, np.packbits(bits).tobytes(), total


def decode(table: HuffmanTable, data: bytes, n_bits: int, count: int) -> np.ndarray:
    """The ``count`` symbols encoded in ``data``; raises ArchiveError on a stream that does not decode.

    Memory is bounded by the stream's own length (every code takes at least one bit): the next ``max_length`` bits
    at every position, and a binary search over the canonical codes (no table of ``2^max_length`` entries, which a
    crafted 24-bit code would make 16 M entries long).
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if len(table.lengths) == 0:
        raise ArchiveError("Huffman stream has symbols but an empty code table")
    if n_bits > len(data) * 8:
        raise ArchiveError(f"Huffman stream truncated: {len(data) * 8} bits for {n_bits}")
    if count > n_bits:
        raise ArchiveError(f"Huffman stream of {n_bits} bits cannot hold {count} symbols (each takes a bit at least)")
    width = int(table.lengths.max())
    lengths = table.lengths.astype(np.int64)
    # canonical codes, left-aligned to `width` bits, increase strictly: a window belongs to the last start <= it
    starts = table.codes() << (width - lengths)
    ends = (starts + (1 << (width - lengths))).tolist()
    starts_list, lens = starts.tolist(), lengths.tolist()
    padded = np.concatenate([np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n_bits],
                             np.zeros(width, dtype=np.uint8)])  # fmt: skip
    windows = np.zeros(n_bits, dtype=np.int32)  # the next `width` (<= 24) bits at every position
    for j in range(width):
        windows = (windows << 1) | padded[j : j + n_bits]
    view = memoryview(windows.data)
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for k in range(count):
        if pos >= n_bits:
            raise ArchiveError(f"Huffman stream ended after {k} of {count} symbols")
        w = view[pos]
        i = bisect.bisect_right(starts_list, w) - 1
        if i < 0 or w >= ends[i]:
            raise ArchiveError(f"invalid Huffman code at bit {pos}")
        out[k] = i
        pos += lens[i]
    if pos > n_bits:  # the last code ran into the zero padding
        over = pos - n_bits
        raise ArchiveError(f"Huffman stream ends {over} bit{'s' if over > 1 else ''} inside its last code")
    if pos != n_bits:
        raise ArchiveError(f"Huffman stream has {n_bits - pos} bits left over after {count} symbols")
    return table.symbols[out]


# -- code tables on disk -------------------------------------------------------------------------------------------
# A table is: varint(k), then the k symbols in ascending order (the first zigzag-coded, the rest as varint deltas),
# then k bytes of code lengths in the same order. Canonical codes need nothing more.


def varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ArchiveError("Huffman code table truncated or malformed")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def table_to_bytes(table: HuffmanTable) -> bytes:
    order = np.argsort(table.symbols, kind="stable")
    symbols, lengths = table.symbols[order].tolist(), table.lengths[order].tolist()
    out = bytearray()
    varint(len(symbols), out)
    prev = None
    for s in symbols:
        varint((s << 1) ^ (s >> 63) if prev is None else s - prev, out)  # zigzag for the (maybe negative) first
        prev = s
    out.extend(lengths)
    return bytes(out)


def table_from_bytes(data: bytes) -> HuffmanTable:
    k, pos = read_varint(data, 0)
    if 2 * k > len(data):  # a symbol takes a varint byte and a length byte at least
        raise ArchiveError(f"Huffman code table declares {k} symbols in {len(data)} bytes")
    symbols, prev = [], None
    for _ in range(k):
        v, pos = read_varint(data, pos)
        prev = ((v >> 1) ^ -(v & 1)) if prev is None else prev + v
        if not -(1 << 63) <= prev < 1 << 63:
            raise ArchiveError("Huffman code table holds a symbol outside 64-bit integers")
        symbols.append(prev)
    lengths = np.frombuffer(data[pos : pos + k], dtype=np.uint8)
    if len(lengths) != k or pos + k != len(data):
        raise ArchiveError("Huffman code table truncated or malformed")
    if k and (lengths.min() == 0 or lengths.max() > MAX_BITS):
        raise ArchiveError("Huffman code table has an invalid code length")
    if k > 1 and float(np.sum(2.0 ** -lengths.astype(np.float64))) > 1.0:
        raise ArchiveError("Huffman code table is not a prefix code (Kraft sum > 1)")
    sym = np.asarray(symbols, dtype=np.int64)
    order = np.lexsort((sym, lengths))
    return HuffmanTable(sym[order], lengths[order].copy())
