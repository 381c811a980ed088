"""Canonical Huffman coding of integer symbol streams (the last stage of Deep Compression).

Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 1952; canonical codes (Schwartz &
Kallick 1964) so that a code table is just each symbol's code length. Code lengths are limited to ``MAX_BITS`` by
flattening the frequencies and rebuilding, as zlib does. Encoding and decoding are vectorized with numpy (no Python
loop per symbol): all-MiniLM-L6-v2's dynamic int8 archive holds 10.8 M Huffman-coded int8 codes. The decoder is in
``_huffman_decode`` (:func:`decode` is importable from here).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from deepslim.compress.coding._huffman_decode import decode as decode
from deepslim.errors import ArchiveError

MAX_BITS = 24
_ENCODE_CHUNK = 1 << 18  # symbols encoded at a time (their (chunk, 32) bit matrix stays 8 MB)


@dataclass(frozen=True)
class HuffmanTable:
    symbols: np.ndarray  # (k,) int64, in canonical order (by length, then symbol)
    lengths: np.ndarray  # (k,) uint8

    def codes(self) -> np.ndarray:
        """Canonical codes: consecutive integers within a length, shifted left when the length grows."""
        lengths = self.lengths.astype(np.int64)
        if len(lengths) == 0:
            return np.zeros(0, dtype=np.int64)
        if np.all(np.diff(lengths) >= 0):  # canonical order: code i, left-aligned, is the Kraft sum of codes < i
            width = int(lengths.max())
            steps = np.left_shift(1, width - lengths)
            return (np.cumsum(steps) - steps) >> (width - lengths)
        codes = np.zeros(len(lengths), dtype=np.int64)
        code, prev = 0, int(lengths[0])
        for i, length in enumerate(lengths.tolist()):  # out of canonical order (only tables made by hand)
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
    return table, *_pack(codes, lengths)


def _pack(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """(the codes concatenated, most significant bit first and zero-padded to a byte; their number of bits).

    A chunk of codes at a time: each code left-aligned in a big-endian 32-bit word, the words' bits as a (chunk, 32)
    matrix, and of each row its first ``length`` bits, in row-major order (no loop over symbols or bit positions).
    """
    total = int(lengths.sum())
    width = int(lengths.max())
    bits = np.empty(total, dtype=np.uint8)
    at = 0
    for lo in range(0, len(codes), _ENCODE_CHUNK):
        code, length = codes[lo : lo + _ENCODE_CHUNK], lengths[lo : lo + _ENCODE_CHUNK]
        words = (code << (32 - length)).astype(">u4")  # (n,) the code in the word's top bits
        matrix = np.unpackbits(words.view(np.uint8)).reshape(-1, 32)[:, :width]  # (n, width)
        chunk = matrix[np.arange(width) < length[:, None]]
        bits[at : at + len(chunk)] = chunk
        at += len(chunk)
    return np.packbits(bits).tobytes(), total


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
