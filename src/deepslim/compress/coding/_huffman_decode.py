"""Decoding canonical Huffman streams (:func:`deepslim.compress.coding.huffman.decode`), vectorized with numpy.

A Python loop over the symbols took seconds for all-MiniLM-L6-v2's 10.8 M int8 codes. Here, a segment of the stream
at a time, many decoders start at once, one every few hundred bits (:func:`_sync_chunk_bits`), and advance one code
per step in lockstep; a decoder started inside a code reads wrong codes at first, but a Huffman decoder falls back
into step with the true codes within a few codes, so the decoders' paths are joined where they meet
(:func:`_sync_starts`). A stream whose decoders do not meet (a code of equal lengths, a crafted stream) is decoded by
pointer doubling over every bit position instead (:func:`_chain`). A code's length and index come from a table of
its first bits (:class:`_Lookup`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deepslim.errors import ArchiveError

if TYPE_CHECKING:
    from deepslim.compress.coding.huffman import HuffmanTable

WINDOW_BITS = 24  # the longest code read: 24 bits from any bit offset of a byte lie in the 32-bit word there
SEGMENT_BITS = 1 << 18  # decode a segment of the stream at a time: its arrays stay cache-sized (measured best)
_LUT_MAX_BITS = 20  # the table of a window's first bits has at most 2^20 entries (5 MB)
_LONG = 255  # in that table: the bits begin a code longer than the table's index
_DOUBLINGS = 6  # pointer doubling finds every 2^6-th code start first
_SYNC_CODES = 32  # a decoder starts every 32 average code lengths (at least 256 bits) ...
_SYNC_OVERLAP = 0.25  # ... goes on a quarter chunk past its own in lockstep ...
_SYNC_LATE_CHUNKS = 8  # ... and must meet a later decoder within 8 chunks (else: pointer doubling)


def decode(table: HuffmanTable, data: bytes, n_bits: int, count: int) -> np.ndarray:
    """The ``count`` symbols encoded in ``data``; raises ArchiveError on a stream that does not decode.

    Vectorized, a segment of the stream at a time (:data:`SEGMENT_BITS`; see the module docstring). Memory is bounded
    by the segment and the output, never by ``2^max_length`` (a crafted 24-bit code would make a full table of codes
    16 M entries long).
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if len(table.lengths) == 0:
        raise ArchiveError("Huffman stream has symbols but an empty code table")
    if n_bits > len(data) * 8:
        raise ArchiveError(f"Huffman stream truncated: {len(data) * 8} bits for {n_bits}")
    if count > n_bits:
        raise ArchiveError(f"Huffman stream of {n_bits} bits cannot hold {count} symbols (each takes a bit at least)")
    lookup = _Lookup(table, n_bits, count)
    padded = _padded_bytes(data, n_bits)
    out = np.empty(count, dtype=np.int64)
    k = pos = 0  # symbols decoded, and the bit where the next code starts
    for seg in range(0, n_bits, SEGMENT_BITS):
        stop = min(seg + SEGMENT_BITS, n_bits)
        if pos >= stop:  # a code of the previous segment ran over this one
            continue
        words = _words(padded, seg, stop)
        starts = _code_starts(lookup, words, stop - seg, pos - seg)  # (n,) in the segment, ascending
        index, lengths = lookup.codes_at(_windows_at(words, starts, lookup.width))
        wanted = count - k
        bad = np.flatnonzero(lengths == 0)
        if len(bad) and bad[0] < wanted:
            raise ArchiveError(f"invalid Huffman code at bit {seg + int(starts[bad[0]])}")
        if len(starts) > wanted:
            raise ArchiveError(f"Huffman stream has {n_bits - seg - int(starts[wanted])} bits left over after "
                               f"{count} symbols")  # fmt: skip
        out[k : k + len(starts)] = index
        k += len(starts)
        pos = seg + int(starts[-1]) + int(lengths[-1])
    if k < count:
        raise ArchiveError(f"Huffman stream ended after {k} of {count} symbols")
    if pos > n_bits:  # the last code ran into the zero padding
        over = pos - n_bits
        raise ArchiveError(f"Huffman stream ends {over} bit{'s' if over > 1 else ''} inside its last code")
    return table.symbols[out]


class _Lookup:
    """The code at the start of a ``width``-bit window (``width``: the longest code), left-aligned.

    Canonical codes, left-aligned, are consecutive ranges from 0 in table order. A window's first ``k`` bits
    (``k <= 20``: a table of at most max(256, half as many entries as the stream has bits)) index a table giving
    a short code's index and length; the windows that begin a longer code are resolved by a binary search over
    the codes' left-aligned starts.
    """

    def __init__(self, table: HuffmanTable, n_bits: int, count: int) -> None:
        lengths = table.lengths.astype(np.int64)
        if lengths.min() < 1 or lengths.max() > WINDOW_BITS:
            raise ArchiveError("Huffman code table has an invalid code length")
        if np.any(np.diff(lengths) < 0):
            raise ArchiveError("Huffman code table is not in canonical order (by code length)")
        self.width = width = int(lengths.max())
        self.starts = table.codes() << (width - lengths)  # (k,) increasing
        self.end = int(self.starts[-1]) + (1 << (width - int(lengths[-1])))  # windows from here on are no code
        if self.end > 1 << width:
            raise ArchiveError("Huffman code table is not a prefix code (Kraft sum > 1)")
        self.lengths, self.mean_length = lengths, n_bits / max(count, 1)
        self.k = k = min(width, _LUT_MAX_BITS, max(8, n_bits.bit_length() - 2))  # at most max(256, n_bits / 2) entries
        short = int(np.count_nonzero(lengths <= k))
        spans = 1 << (k - lengths[:short])  # the k-bit prefixes of each short code
        n_short = int(spans.sum())
        self.lut_length = np.zeros(1 << k, dtype=np.uint8)  # 0: no code starts with these bits
        self.lut_index = np.zeros(1 << k, dtype=np.int32)
        self.lut_length[:n_short] = np.repeat(lengths[:short], spans)
        self.lut_index[:n_short] = np.repeat(np.arange(short), spans)
        self.lut_length[n_short : -(-self.end >> (width - k))] = _LONG  # prefixes of the longer codes
        self.lut_step = np.where(self.lut_length == 0, 1, self.lut_length).astype(np.uint8)  # a wrong code: 1 bit on
        self.lut_step[self.lut_length == _LONG] = 0  # resolved by the search

    def steps_at(self, words: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n,) how far a decoder at each of ``positions`` moves: the length of the code there, 1 where none (a
        decoder that has not synchronized yet reads such bits; see :func:`_sync_starts`)."""
        first = (words[positions >> 3] >> ((32 - self.k) - (positions & 7))) & ((1 << self.k) - 1)
        out = self.lut_step[first]
        if self.width > self.k:
            long = np.flatnonzero(out == 0)
            if len(long):
                found = self._search(_windows_at(words, positions[long], self.width))[1]
                out[long] = np.maximum(found, 1)
        return out

    def lengths_at(self, windows: np.ndarray) -> np.ndarray:
        """(n,) uint8: the length of the code each window begins with, 0 where none."""
        out = self.lut_length[windows >> (self.width - self.k)]
        long = np.flatnonzero(out == _LONG)
        if len(long):
            out[long] = self._search(windows[long])[1]
        return out

    def codes_at(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(code index, length) of the code each window begins with (length 0 where none)."""
        first = windows >> (self.width - self.k)
        index, length = self.lut_index[first], self.lut_length[first].astype(np.int64)
        long = np.flatnonzero(length == _LONG)
        if len(long):
            index[long], length[long] = self._search(windows[long])
        return index, length

    def _search(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.searchsorted(self.starts, windows, side="right") - 1
        return index, np.where(windows < self.end, self.lengths[index], 0)


def _padded_bytes(data: bytes, n_bits: int) -> np.ndarray:
    """The stream's bytes, the bits after ``n_bits`` zeroed, and 4 zero bytes after (a window reads past the end)."""
    n_bytes = -(-n_bits // 8)
    out = np.zeros(n_bytes + 4, dtype=np.uint8)
    out[:n_bytes] = np.frombuffer(data, dtype=np.uint8, count=n_bytes)
    if n_bits % 8:
        out[n_bytes - 1] &= (0xFF << (8 - n_bits % 8)) & 0xFF
    return out


def _words(padded: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(n // 8 + 1,) uint32, ``n = stop − start``: the big-endian 32-bit word at each byte from bit ``start`` (a
    multiple of 8) on; bit position ``p`` of the segment reads its next 24 bits from word ``p // 8``."""
    first, count = start // 8, (stop - start) // 8 + 1
    b = padded[first : first + count + 3].astype(np.uint32)
    return (b[:count] << 24) | (b[1 : count + 1] << 16) | (b[2 : count + 2] << 8) | b[3 : count + 3]


def _windows_at(words: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` (<= 24) bits from each of ``positions`` (bit positions in the segment of ``words``)."""
    return (words[positions >> 3] >> (32 - width - (positions & 7))) & ((1 << width) - 1)


def _windows(words: np.ndarray, n: int, width: int) -> np.ndarray:
    """(n,) int64: the ``width`` bits from every bit position of the segment."""
    out = np.empty((len(words), 8), dtype=np.int64)  # (byte, bit offset within it)
    for offset in range(8):
        out[:, offset] = (words >> (32 - width - offset)) & ((1 << width) - 1)
    return out.reshape(-1)[:n]


def _code_starts(lookup: _Lookup, words: np.ndarray, n: int, start: int) -> np.ndarray:
    """The positions below ``n`` where codes start, the first at ``start``: by synchronizing decoders where they
    meet, else (a short segment, decoders that never meet) by pointer doubling over every position."""
    chunk = _sync_chunk_bits(lookup)
    if n >= 4 * chunk:
        starts = _sync_starts(lookup, words, n, start, chunk)
        if starts is not None:
            return starts
    return _chain(np.maximum(lookup.lengths_at(_windows(words, n, lookup.width)), 1), start)


def _sync_chunk_bits(lookup: _Lookup) -> int:
    """The bits between two decoders' starts: 32 codes of the average length, a power of two from 256 to 8192 (a
    decoder started inside a code resynchronizes after a few codes: 22 bits at the median on all-MiniLM-L6-v2's int8
    codes, 121 bits on the 17-bit codebook indices of its position embeddings)."""
    return 1 << min(max(round(_SYNC_CODES * lookup.mean_length).bit_length(), 8), 13)


def _sync_starts(lookup: _Lookup, words: np.ndarray, n: int, start: int, chunk: int) -> np.ndarray | None:
    """Code starts as :func:`_code_starts`, or None where a decoder does not meet a later one soon enough.

    Decoder ``j`` starts at bit ``j · C`` (decoder 0 at ``start``, a true code start) and all of them advance one code
    per step, in lockstep, to a quarter chunk past the end of their own (the few that have not met the next decoder
    by then go on alone, :func:`_meet_late`). A decoder started inside a code reads wrong codes at first, but once it
    lands on a true code start it follows the true codes. So, by induction, a true decoder stays true until it first
    lands on a position that the decoder of that position's chunk visited; from there that decoder is true. The true
    starts: decoder 0's up to its meeting point, then those of the decoder it met, and so on.
    """
    rows = -(-n // chunk)
    begin = np.arange(rows, dtype=np.int64) * chunk
    begin[0] = start
    end = np.minimum(np.arange(1, rows + 1, dtype=np.int64) * chunk, n)  # (rows,) each decoder's own chunk ends here
    limit = np.minimum(end + int(chunk * _SYNC_OVERLAP), n)
    at, visited = begin, [begin]
    while (at < limit).any():  # decoders past their limit go on too: cheaper than masking them
        at = at + lookup.steps_at(words, np.minimum(at, n))
        visited.append(at)
    path = np.array(visited)  # (steps, rows): each decoder's positions down a column, ascending
    own = path < end
    mark = np.zeros(n + 1, dtype=bool)
    mark[path[own]] = True  # positions that the decoder of their own chunk visited
    meets = (path >= end) & (path < limit) & mark[np.minimum(path, n)]
    found = meets.any(axis=0)
    meet = np.where(found, path[meets.argmax(axis=0), np.arange(rows)], n)  # (rows,) where decoder j meets another
    late = np.flatnonzero(~found[:-1])
    extra = np.zeros(0, dtype=np.int64)
    if len(late):
        first_out = path[(path[:, late] >= limit[late]).argmax(axis=0), late]  # where the overlap left them
        caught = _meet_late(lookup, words, n, mark, first_out, np.minimum(end[late] + _SYNC_LATE_CHUNKS * chunk, n))
        if caught is None:
            return None
        meet[late], extra, extra_row = caught
        extra_row = late[extra_row]
    met = np.where(meet >= n, rows, meet // chunk)  # (rows,) the decoder whose chunk holds the meeting point
    chain = _chain(met - np.arange(rows), 0)  # the true decoders, in order
    since = np.full(rows, n + 1, dtype=np.int64)  # decoders off the chain keep nothing
    since[0], since[chain[1:]] = start, meet[chain[:-1]]
    keep = (path >= since) & (path < np.minimum(meet, limit))  # past the limit: `extra`
    starts = path.T[keep.T]  # decoder by decoder: ascending
    if len(extra):
        on_chain = np.zeros(rows, dtype=bool)
        on_chain[chain] = True
        extra = np.sort(extra[on_chain[extra_row]])
        starts = np.insert(starts, np.searchsorted(starts, extra), extra)
    return starts


def _meet_late(lookup: _Lookup, words: np.ndarray, n: int, mark: np.ndarray, at: np.ndarray,
               stop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
    """Decoders that passed their overlap without meeting the next decoder go on until they land on a marked position
    (visited by the decoder of its chunk): (where each met, and their positions before that with the index of the
    decoder). None when one passes ``stop`` first (a stream slow to resynchronize: pointer doubling is then
    faster); one that passes the segment's end meets it there."""
    meet = np.full(len(at), -1, dtype=np.int64)
    extra, extra_row = [], []
    live = np.arange(len(at))
    while len(live):
        cur = at[live]
        past = cur >= stop[live]
        if (past & (stop[live] < n)).any():
            return None
        hit = past | mark[np.minimum(cur, n)]  # past the segment's end: it meets the end
        meet[live[hit]] = np.minimum(cur[hit], n)
        live = live[~hit]
        extra.append(at[live])
        extra_row.append(live)
        at[live] += lookup.steps_at(words, at[live])
    return meet, np.concatenate(extra), np.concatenate(extra_row)


def _chain(steps: np.ndarray, start: int) -> np.ndarray:
    """The positions ``start, start + steps[start], ...`` below ``len(steps)`` (every step >= 1), ascending.

    Pointer doubling: ``jump = next^B`` for blocks of B = 2^_DOUBLINGS steps takes a few vectorized passes, the block
    starts are then a short Python walk over ``jump``, and the B positions of all blocks follow in B vectorized steps.
    """
    n = len(steps)
    nxt = np.empty(n + 1, dtype=np.int64)  # position n: past the segment (absorbing)
    np.minimum(np.arange(n, dtype=np.int64) + steps, n, out=nxt[:n])
    nxt[n] = n
    jump = nxt
    for _ in range(_DOUBLINGS):
        jump = jump[jump]
    walk, blocks, at = jump.data, [], start  # a Python int per index (no numpy scalars)
    while at < n:
        blocks.append(at)
        at = walk[at]
    block = np.array(blocks, dtype=np.int64)
    rows = np.empty((len(block), 1 << _DOUBLINGS), dtype=np.int64)  # (blocks, B): row-major is the chain's order
    for i in range(rows.shape[1]):
        rows[:, i] = block
        block = nxt[block]
    flat = rows.reshape(-1)
    return flat[: int(np.searchsorted(flat, n))]
