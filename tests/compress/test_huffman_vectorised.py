"""The vectorized Huffman coder against the per-symbol coder it replaced (kept here, and only here, as the oracle):
the same bytes from ``encode``, the same symbols from ``decode``, and on broken streams the same ArchiveError message
-- never a wrong tensor. Streams: skewed and uniform alphabets, one or two symbols, 24-bit codes, codes straddling the
decoder's segments, and every single-bit corruption and truncation of a stream."""

import bisect

import numpy as np
import pytest

from deepslim.compress.coding import _huffman_decode as huffman_decode
from deepslim.compress.coding import huffman
from deepslim.compress.coding.huffman import HuffmanTable, decode, encode
from deepslim.errors import ArchiveError


def _old_codes(table):
    codes = np.zeros(len(table.lengths), dtype=np.int64)
    code, prev = 0, int(table.lengths[0]) if len(table.lengths) else 0
    for i, length in enumerate(table.lengths.tolist()):
        code <<= length - prev
        codes[i], prev = code, length
        code += 1
    return codes


def _old_bits(table, values):
    """The encoder of format version 2 (session 10): (packed bits, number of bits)."""
    values = np.asarray(values, dtype=np.int64)
    symbols, inverse = np.unique(values, return_inverse=True)
    position = np.empty(len(symbols), dtype=np.int64)
    position[np.searchsorted(symbols, table.symbols)] = np.arange(len(symbols))
    return _old_pack(_old_codes(table)[position][inverse], table.lengths.astype(np.int64)[position][inverse])


def _old_pack(codes, lengths):
    """Its packing: one pass per bit position of the codes."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    bits = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max())):
        has = lengths > j
        bits[starts[has] + j] = (codes[has] >> (lengths[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), len(bits)


def _old_decode(table, data, n_bits, count):
    """The per-symbol decoder of format version 2 (session 10): a Python loop over the symbols."""
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
    starts = _old_codes(table) << (width - lengths)
    ends = (starts + (1 << (width - lengths))).tolist()
    starts_list, lens = starts.tolist(), lengths.tolist()
    padded = np.concatenate([np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n_bits],
                             np.zeros(width, dtype=np.uint8)])  # fmt: skip
    windows = np.zeros(n_bits, dtype=np.int32)
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
    if pos > n_bits:
        over = pos - n_bits
        raise ArchiveError(f"Huffman stream ends {over} bit{'s' if over > 1 else ''} inside its last code")
    if pos != n_bits:
        raise ArchiveError(f"Huffman stream has {n_bits - pos} bits left over after {count} symbols")
    return table.symbols[out]


def _outcome(fn, *args):
    """The decoded symbols as a list, or the ArchiveError's message."""
    try:
        return fn(*args).tolist()
    except ArchiveError as exc:
        return f"ArchiveError: {exc}"


def _streams():
    rng = np.random.default_rng(11)
    return {
        "skewed int8 codes": np.clip(np.round(rng.standard_t(3, 40_000) * 12), -127, 127).astype(np.int64),
        "uniform 256 symbols": rng.integers(0, 256, 20_000),
        "geometric, 14-bit codes": rng.geometric(0.3, 5_000) * rng.choice([-1, 1], 5_000),
        "one symbol": np.full(3_001, -9),
        "two symbols": rng.choice([5, 6], 3_000, p=[0.999, 0.001]),
    }


# a complete prefix code of lengths 1, 2, ..., 23, 24, 24 (Kraft sum exactly 1), built by hand: counts that make a
# Huffman code this deep are Fibonacci-like and sum to hundreds of thousands
DEEP = HuffmanTable(np.arange(25, dtype=np.int64), np.array([*range(1, 25), 24], dtype=np.uint8))


def _deep_stream(n, seed=0):
    """``n`` symbols of DEEP (each about as likely as its code is short, the 24-bit ones forced in) and their bits."""
    rng = np.random.default_rng(seed)
    values = np.minimum(rng.geometric(0.3, n) - 1, 24)
    values[:: max(n // 8, 1)] = 24
    values[1 :: max(n // 8, 1)] = 23
    codes, lengths = _old_codes(DEEP)[values], DEEP.lengths.astype(np.int64)[values]
    bits = "".join(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True))
    return values, np.packbits(np.array([int(b) for b in bits], dtype=np.uint8)).tobytes(), len(bits)


@pytest.mark.parametrize("name", list(_streams()))
def test_encode_writes_the_old_encoders_bytes_and_decode_reads_back_the_symbols(name):
    values = _streams()[name]
    table, data, n_bits = encode(values)
    assert (data, n_bits) == _old_bits(table, values)
    assert table.codes().tolist() == _old_codes(table).tolist()
    out = decode(table, data, n_bits, len(values))
    assert out.dtype == np.int64 and np.array_equal(out, values)


@pytest.mark.parametrize(("n", "table_bits"), [(9, 8), (3000, 12), (40_000, 16)])
def test_24_bit_codes_decode_through_the_long_code_search(n, table_bits):
    values, data, n_bits = _deep_stream(n)
    assert int(DEEP.lengths[values].max()) == 24
    assert huffman_decode._Lookup(DEEP, n_bits, n).k == table_bits  # a window's first 8, 12, 16 bits index the table
    out = decode(DEEP, data, n_bits, n)
    assert np.array_equal(out, values) and out.tolist() == _old_decode(DEEP, data, n_bits, n).tolist()


@pytest.mark.parametrize("segment", [8, 16, 24, 64, 1 << 10])
def test_codes_straddling_the_decoders_segments_decode_as_one_stream(segment, monkeypatch):
    monkeypatch.setattr(huffman_decode, "SEGMENT_BITS", segment)
    streams = _streams()
    for name in ("geometric, 14-bit codes", "one symbol"):
        values = streams[name][:2000]
        table, data, n_bits = encode(values)
        assert np.array_equal(decode(table, data, n_bits, len(values)), values), name
    values, data, n_bits = _deep_stream(500, seed=1)
    assert np.array_equal(decode(DEEP, data, n_bits, len(values)), values)


def test_a_stream_of_several_segments_with_codes_longer_than_sixteen_bits():
    rng = np.random.default_rng(3)
    values = np.minimum(rng.geometric(0.25, 400_000), 40)  # codes of 2..~22 bits; 1.2 M bits > one segment
    table, data, n_bits = encode(values)
    assert n_bits > huffman_decode.SEGMENT_BITS and int(table.lengths.max()) > 16
    assert np.array_equal(decode(table, data, n_bits, len(values)), values)


@pytest.mark.parametrize("segment", [8, 1 << 20])
def test_every_single_bit_flip_decodes_or_fails_exactly_as_the_old_decoder(segment, monkeypatch):
    monkeypatch.setattr(huffman_decode, "SEGMENT_BITS", segment)
    rng = np.random.default_rng(5)
    for values in (rng.geometric(0.4, 60), np.array([3, 3, 4, 3, 3, 3, 5, 3]),
                   np.repeat(np.arange(8), [1, 1, 2, 4, 8, 16, 32, 64])[::3]):  # fmt: skip
        table, data, n_bits = encode(values)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        outcomes = set()
        for flip in range(len(bits)):
            broken = bits.copy()
            broken[flip] ^= 1
            args = (table, np.packbits(broken).tobytes(), n_bits, len(values))
            got = _outcome(decode, *args)
            assert got == _outcome(_old_decode, *args), flip
            outcomes.add(got if isinstance(got, str) else "decodes")
        assert any(o.startswith("ArchiveError") for o in outcomes)  # corruption is caught, by the old rules


def test_truncations_and_wrong_counts_fail_with_the_old_decoders_messages():
    values = np.random.default_rng(8).geometric(0.35, 300)
    table, data, n_bits = encode(values)
    cases = [(data, n_bits - cut, len(values)) for cut in range(1, 40)]
    cases += [(data[:cut], n_bits, len(values)) for cut in range(0, len(data), 7)]
    cases += [(data, n_bits, len(values) + extra) for extra in (-50, -1, 1, 50)]
    for data_, bits_, count in cases:
        want = _outcome(_old_decode, table, data_, bits_, count)
        assert _outcome(decode, table, data_, bits_, count) == want
        assert want.startswith("ArchiveError") or bits_ == n_bits


def test_an_incomplete_code_refuses_windows_past_its_last_code_in_the_long_code_path():
    # lengths 1, 2, ..., 20: Kraft sum 1 - 2^-20, the all-ones window is no code; the first-level table has 8 bits
    table = HuffmanTable(np.arange(20, dtype=np.int64), np.arange(1, 21, dtype=np.uint8))
    codes = _old_codes(table)
    bits = "".join(format(int(codes[s]), f"0{s + 1}b") for s in (19, 0, 12)) + "1" * 20
    data = np.packbits(np.array([int(b) for b in bits], dtype=np.uint8)).tobytes()
    assert decode(table, data, len(bits) - 20, 3).tolist() == [19, 0, 12]
    with pytest.raises(ArchiveError, match=f"^invalid Huffman code at bit {len(bits) - 20}$"):
        decode(table, data, len(bits), 4)
    assert _outcome(_old_decode, table, data, len(bits), 4) == _outcome(decode, table, data, len(bits), 4)


def test_the_decoder_reads_every_code_length_the_encoder_writes():
    assert huffman.MAX_BITS <= huffman_decode.WINDOW_BITS == 24  # 24 bits from any bit offset fit a 32-bit word


def test_a_table_that_is_no_prefix_code_or_out_of_order_is_refused_not_misread():
    over = HuffmanTable(np.arange(3, dtype=np.int64), np.array([1, 1, 2], dtype=np.uint8))  # Kraft sum 1.25
    with pytest.raises(ArchiveError, match=r"^Huffman code table is not a prefix code \(Kraft sum > 1\)$"):
        decode(over, b"\x00", 8, 2)
    unordered = HuffmanTable(np.arange(3, dtype=np.int64), np.array([2, 1, 2], dtype=np.uint8))
    with pytest.raises(ArchiveError, match=r"^Huffman code table is not in canonical order"):
        decode(unordered, b"\x00", 8, 2)
    too_long = HuffmanTable(np.arange(2, dtype=np.int64), np.array([1, 25], dtype=np.uint8))
    with pytest.raises(ArchiveError, match=r"^Huffman code table has an invalid code length$"):
        decode(too_long, b"\x00", 8, 2)


class _Spy:
    """Records what ``huffman_decode._sync_starts`` returned (None: its decoders did not meet, pointer doubling ran)."""

    def __init__(self, monkeypatch, chunk, overlap):
        self.results, self.late, real, late = [], [], huffman_decode._sync_starts, huffman_decode._meet_late
        monkeypatch.setattr(huffman_decode, "_sync_chunk_bits", lambda lookup: chunk)
        monkeypatch.setattr(huffman_decode, "_SYNC_OVERLAP", overlap)
        monkeypatch.setattr(huffman_decode, "_sync_starts", lambda *a: self._keep(self.results, real(*a)))
        monkeypatch.setattr(huffman_decode, "_meet_late", lambda *a: self._keep(self.late, late(*a)))

    @staticmethod
    def _keep(results, result):
        results.append(result)
        return result


@pytest.mark.parametrize(("chunk", "overlap"), [(16, 0), (16, 0.3), (64, 0.125), (256, 0.25)])
def test_synchronizing_decoders_join_into_the_true_codes(chunk, overlap, monkeypatch):
    spy = _Spy(monkeypatch, chunk, overlap)
    rng = np.random.default_rng(chunk + int(100 * overlap))
    for seed in range(6):
        values = np.minimum(rng.geometric(0.2 + 0.1 * seed, 700 + 300 * seed), 30)  # 1- to ~14-bit codes
        table, data, n_bits = encode(values)
        assert np.array_equal(decode(table, data, n_bits, len(values)), values), seed
    values, data, n_bits = _deep_stream(900, seed=2)
    assert np.array_equal(decode(DEEP, data, n_bits, len(values)), values)
    joined = [r is not None for r in spy.results]
    assert all(joined) if chunk == 256 else any(joined)  # 16-bit chunks: 24-bit codes need not resynchronize in one
    assert any(r is not None for r in spy.late) if overlap < 0.25 else True  # decoders that met after their overlap


def test_decoders_that_do_not_meet_soon_enough_fall_back_to_pointer_doubling(monkeypatch):
    spy = _Spy(monkeypatch, 16, 0.3)
    monkeypatch.setattr(huffman_decode, "_SYNC_LATE_CHUNKS", 1)  # meet within the next chunk
    values = np.random.default_rng(4).integers(0, 8, 3000)  # eight 3-bit codes: a decoder off by 1 or 2 bits stays off
    table, data, n_bits = encode(values)
    assert table.lengths.tolist() == [3] * 8
    assert np.array_equal(decode(table, data, n_bits, len(values)), values)
    assert spy.results and all(r is None for r in spy.results)
    monkeypatch.setattr(huffman_decode, "_SYNC_LATE_CHUNKS", 3)  # every third chunk starts on a code: they meet
    assert np.array_equal(decode(table, data, n_bits, len(values)), values) and spy.results[-1] is not None


@pytest.mark.parametrize(("chunk", "overlap"), [(32, 0), (32, 0.2)])
def test_bit_flips_through_the_synchronizing_decoders_fail_as_the_old_decoder(chunk, overlap, monkeypatch):
    spy = _Spy(monkeypatch, chunk, overlap)
    values = np.minimum(np.random.default_rng(9).geometric(0.35, 120), 12)
    table, data, n_bits = encode(values)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    for flip in range(len(bits)):
        broken = bits.copy()
        broken[flip] ^= 1
        args = (table, np.packbits(broken).tobytes(), n_bits, len(values))
        assert _outcome(decode, *args) == _outcome(_old_decode, *args), flip
    assert any(r is not None for r in spy.results)
