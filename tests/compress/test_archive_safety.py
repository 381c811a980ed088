"""Crafted .dsz archives: every declared size is bounded by the file's own bytes, and refused before allocating.

Each crafted archive is resealed (lengths and CRC recomputed) so that it reaches the checks behind the checksum.
Peak memory is measured with tracemalloc, which sees Python's and numpy's allocations.
"""

from __future__ import annotations

import json
import math
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

import deepslim as ds
from deepslim.compress.coding import huffman
from deepslim.compress.coding.archive import HEADER_BYTES

PEAK_LIMIT = 200 << 20


@pytest.fixture(scope="module")
def blob() -> bytes:
    torch.manual_seed(0)
    model = ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.8))
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    return ds.encode(model)


def _split(data: bytes) -> tuple[dict, bytes]:
    _, _, _, m_len, _, _ = struct.unpack_from("<8sHHIQI", data)
    manifest = json.loads(zlib.decompress(data[HEADER_BYTES : HEADER_BYTES + m_len]))
    return manifest, data[HEADER_BYTES + m_len :]


def _seal(manifest_blob: bytes, payload: bytes) -> bytes:
    """An archive with this (compressed) manifest and payload, its lengths and checksum made right."""
    body = manifest_blob + payload
    magic, version = b"\x89DSZ\r\n\x1a\n", 1
    return struct.pack("<8sHHIQI", magic, version, 0, len(manifest_blob), len(payload), zlib.crc32(body)) + body


def _craft(data: bytes, edit) -> bytes:
    manifest, payload = _split(data)
    edit(manifest)
    return _seal(zlib.compress(json.dumps(manifest).encode(), 9), payload)


def _entry(manifest: dict, layout: str) -> dict:
    return next(e for e in manifest["tensors"] if e["layout"] == layout and math.prod(e["shape"]) > 1)


def _refused(data: bytes, match: str) -> tuple[float, int]:
    """(seconds, peak traced bytes) of decoding ``data``, which must fail with an ArchiveError matching ``match``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ds.ArchiveError, match=match):
            ds.decode(data)
        with pytest.raises(ds.ArchiveError, match=match):
            ds.archive_info(data)
        return time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_resealing_an_unchanged_manifest_keeps_the_archive_valid(blob):
    same = _craft(blob, lambda m: None)
    assert ds.archive_info(same).tensors == ds.archive_info(blob).tensors
    a, b = ds.decode(blob).state_dict(), ds.decode(same).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_zlib_bomb_manifest_is_refused_without_inflating_it(blob):
    manifest, payload = _split(blob)
    manifest["padding"] = " " * (600 << 20)  # 600 MB of JSON in ~600 KB of zlib
    bomb = _seal(zlib.compress(json.dumps(manifest).encode(), 9), payload)
    del manifest
    assert len(bomb) < 2 << 20
    seconds, peak = _refused(bomb, "zlib bomb")
    assert peak < PEAK_LIMIT and seconds < 5


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_an_oversized_declared_shape_is_refused_before_allocating(blob, layout):
    def grow(manifest):
        _entry(manifest, layout)["shape"] = [100_000, 100_000, 2]  # 75 GB of float32

    message = "refusing to allocate" if layout == "sparse" else "raw bytes|code stream"
    seconds, peak = _refused(_craft(blob, grow), message)
    assert peak < PEAK_LIMIT and seconds < 5


def test_a_huge_huffman_symbol_count_is_refused_before_allocating(blob):
    def inflate(manifest):
        entry = _entry(manifest, "sparse")
        entry["nonzeros"] = entry["streams"]["codes"]["count"] = 10**10
        entry["shape"] = [10**10]

    seconds, peak = _refused(_craft(blob, inflate), "count")
    assert peak < PEAK_LIMIT and seconds < 5


def test_a_code_table_declaring_more_symbols_than_bytes_is_refused():
    table = bytearray()
    huffman.varint(10**12, table)
    with pytest.raises(ds.ArchiveError, match="declares 1000000000000 symbols"):
        huffman.table_from_bytes(bytes(table) + b"\0\1")


def test_a_24_bit_code_decodes_without_a_table_of_2_to_the_24_entries():
    # a complete prefix code: lengths 1, 2, ..., 23, 24, 24 (Kraft sum exactly 1)
    lengths = np.array([*range(1, 25), 24], dtype=np.uint8)
    table = huffman.HuffmanTable(np.arange(25, dtype=np.int64), lengths)
    symbols = np.array([24, 0, 23, 5, 24], dtype=np.int64)
    codes, lens = table.codes(), table.lengths.astype(np.int64)
    bits = "".join(format(int(codes[s]), f"0{lens[s]}b") for s in symbols)
    data = np.packbits(np.array([int(b) for b in bits], dtype=np.uint8)).tobytes()
    tracemalloc.start()
    try:
        out = huffman.decode(table, data, len(bits), len(symbols))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, symbols)
    assert peak < 16 << 20  # a lookup table of 2^24 int64 entries alone is 128 MB


def test_a_symbol_count_above_the_stream_bits_is_refused():
    table = huffman.HuffmanTable(np.array([7], dtype=np.int64), np.array([1], dtype=np.uint8))
    with pytest.raises(ds.ArchiveError, match="cannot hold"):
        huffman.decode(table, b"\0", 8, 10**9)


def test_a_deeply_nested_manifest_is_an_archive_error(blob):
    _, payload = _split(blob)
    nested = b'{"format": "deepslim-archive", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(ds.ArchiveError, match="unreadable"):
        ds.decode(_seal(zlib.compress(nested, 9), payload))


def test_malformed_entries_are_archive_errors_in_archive_info_too(blob):
    def unknown_part(m):
        m["tensors"][0]["parts"]["secret"] = [0, 1]

    def negative_dim(m):
        m["tensors"][0]["shape"] = [-1, 5]

    def far_part(m):
        m["tensors"][0]["parts"]["raw" if "raw" in m["tensors"][0]["parts"] else "codes"] = [2**62, 2**62]

    def bad_axis(m):
        entry = m["tensors"][0]
        entry["values"] = {"kind": "linear", "bits": 8, "axis": 3, "channels": 1, "asymmetric": False}

    cases = {unknown_part: "not a known part", negative_dim: "a dimension is -1", far_part: "outside the payload",
             bad_axis: "code stream|axis"}  # fmt: skip
    for edit, message in cases.items():
        crafted = _craft(blob, edit)
        with pytest.raises(ds.ArchiveError, match=message):
            ds.archive_info(crafted)
        with pytest.raises(ds.ArchiveError, match=message):
            ds.decode(crafted)


def test_an_architecture_record_asking_for_terabytes_is_refused_before_building(blob):
    def huge(manifest):
        manifest["arch"]["options"]["num_classes"] = 10**10  # a classifier of 10^10 rows: ~20 TB of float32

    tracemalloc.start()
    start = time.process_time()  # CPU time: a loaded machine (or mutmut's tracer) stretches the wall clock
    try:
        with pytest.raises(ds.ModelLoadError, match=r"needs \d+\.\d GiB of weights.*refusing before allocating"):
            ds.decode(_craft(blob, huge))
        assert time.process_time() - start < 5 and tracemalloc.get_traced_memory()[1] < PEAK_LIMIT
    finally:
        tracemalloc.stop()
