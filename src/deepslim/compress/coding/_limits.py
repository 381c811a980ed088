"""What a ``.dsz`` archive may declare, checked against the file's own length before anything is allocated.

A reader that trusts the manifest can be made to allocate without bound: a 517 KB manifest that inflates to
1.3 GB, or a tensor shape or Huffman symbol count that asks for 75 GB. Every size here is bounded by bytes that the
file really holds (each Huffman or fixed-width symbol takes at least one bit; raw values take their width), except
the one thing the format lets a small file describe legitimately — the trailing zeros of a sparse tensor — which is
bounded by an absolute cap and a generous multiple of the file's length. docs/archive-format.md lists the limits.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Container
from typing import Any

from deepslim.errors import ArchiveError

MANIFEST_MAX_BYTES = 32 << 20  # a manifest entry is ~300 bytes: room for ~100,000 tensors
MANIFEST_MAX_RATIO = 256  # inflated bytes per compressed byte (zlib itself reaches ~1,000)
MAX_DIMS = 16
DECODED_MAX_BYTES = 16 << 30  # all tensors of one archive, as decoded
DECODED_PER_FILE_BYTE = 4096  # decoded bytes per byte of file (Deep Compression reaches ~50; 99.9% sparsity ~3,000)
DECODED_FLOOR_BYTES = 64 << 20
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
                 "int8": 1, "uint8": 1, "bool": 1}  # fmt: skip


def inflate_manifest(blob: bytes | memoryview) -> bytes:
    """The manifest's JSON bytes, refusing a stream that inflates past its limit before it gets there."""
    limit = min(MANIFEST_MAX_BYTES, (1 << 20) + MANIFEST_MAX_RATIO * len(blob))
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, limit)
    except zlib.error as exc:
        raise ArchiveError(f"archive manifest unreadable: {exc}") from None
    if inflater.unconsumed_tail or (len(out) >= limit and not inflater.eof):
        raise ArchiveError(f"archive manifest inflates past {limit:,} bytes from {len(blob):,} (a zlib bomb); "
                           "refusing it")  # fmt: skip
    if not inflater.eof:
        raise ArchiveError("archive manifest unreadable: its zlib stream is truncated")
    return out


def check_tensors(manifest: dict[str, Any], payload_bytes: int, file_bytes: int, part_names: Container[str]) -> None:
    """ArchiveError unless every tensor entry is well formed and all of them decode within the file's budget."""
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise ArchiveError("archive manifest malformed: it has no list of tensors")
    budget = min(DECODED_MAX_BYTES, DECODED_FLOOR_BYTES + DECODED_PER_FILE_BYTE * file_bytes)
    total = 0
    for entry in tensors:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ArchiveError("archive manifest malformed: a tensor entry has no name")
        try:
            total += _check_entry(entry, payload_bytes, part_names)
        except ArchiveError as exc:
            raise ArchiveError(f"tensor {entry['name']}: {exc}") from None
        if total > budget:
            raise ArchiveError(f"archive declares more than {budget:,} bytes of tensors in a {file_bytes:,}-byte file "
                               f"(at tensor {entry['name']}); refusing to allocate them")  # fmt: skip


def _int(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        raise ArchiveError(f"{what} is {value!r}, not an integer in [{low}, {'...' if high is None else high}]")
    return value


def _check_entry(entry: dict[str, Any], payload_bytes: int, part_names: Container[str]) -> int:
    """The entry's decoded size in bytes, after checking every declared size against the bytes that back it."""
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ArchiveError(f"shape {shape!r} is not a list of at most {MAX_DIMS} sizes")
    numel = math.prod(_int(s, "a dimension") for s in shape)
    width = ELEMENT_BYTES.get(entry.get("dtype"))  # type: ignore[arg-type]
    if width is None:
        raise ArchiveError(f"unknown dtype {entry.get('dtype')!r}")
    parts = _check_parts(entry.get("parts"), payload_bytes, part_names)
    streams = _check_streams(entry.get("streams"), parts)
    layout, values = entry.get("layout"), entry.get("values")
    if layout == "dense":
        count = numel
    elif layout == "sparse":
        _int(entry.get("index_bits"), "index_bits", 2, 16)
        count = _int(entry.get("nonzeros"), "nonzeros", 0, numel)
        if "index" not in streams or streams["index"] < count:
            raise ArchiveError(f"its index stream cannot hold {count} nonzeros")
    else:
        raise ArchiveError(f"unknown layout {layout!r}")
    if not isinstance(values, dict):
        raise ArchiveError("no value encoding")
    _check_values(values, count, width, shape, layout, parts, streams)
    return numel * width


def _check_parts(parts: Any, payload_bytes: int, part_names: Container[str]) -> dict[str, int]:
    """Part name -> length, each part inside the payload."""
    if not isinstance(parts, dict):
        raise ArchiveError("no parts")
    lengths = {}
    for name, span in parts.items():
        if name not in part_names or not isinstance(span, list) or len(span) != 2:
            raise ArchiveError(f"part {name!r} is not a known part with [offset, length]")
        offset, length = _int(span[0], f"part {name} offset"), _int(span[1], f"part {name} length")
        if offset + length > payload_bytes:
            raise ArchiveError(f"part {name!r} lies outside the payload")
        lengths[name] = length
    return lengths


def _check_streams(streams: Any, parts: dict[str, int]) -> dict[str, int]:
    """Stream name -> symbol count; every symbol of either coding takes at least one bit of its part."""
    if not isinstance(streams, dict):
        raise ArchiveError("no streams")
    counts = {}
    for name, spec in streams.items():
        if not isinstance(spec, dict) or spec.get("coding") not in ("huffman", "fixed") or name not in parts:
            raise ArchiveError(f"stream {name!r} has no known coding or no part")
        bits = _int(spec.get("bits"), f"stream {name} bits", 0, 8 * parts[name])
        counts[name] = _int(spec.get("count"), f"stream {name} count", 0, bits)
    return counts


def _check_values(values: dict[str, Any], count: int, width: int, shape: list[int], layout: str,
                  parts: dict[str, int], streams: dict[str, int]) -> None:  # fmt: skip
    """The value encoding stores exactly ``count`` values, with codebooks and scales of their declared sizes."""
    kind = values.get("kind")
    if kind == "raw":
        if parts.get("raw") != count * width:
            raise ArchiveError(f"{parts.get('raw')} raw bytes for {count} values of {width} bytes")
        return
    if kind not in ("shared", "linear"):
        raise ArchiveError(f"unknown value encoding {kind!r}")
    if streams.get("codes") != count:
        raise ArchiveError(f"its code stream does not hold its {count} values")
    if kind == "shared":
        size = _int(values.get("size"), "codebook size", 1 if count else 0)
        if parts.get("codebook") != size * width:
            raise ArchiveError(f"codebook of {parts.get('codebook')} bytes for {size} entries")
        return
    channels, axis = _int(values.get("channels"), "channels", 1), values.get("axis")
    if axis is None:
        want = 1
    elif type(axis) is int and 0 <= axis < len(shape) and (axis == 0 or layout == "dense"):
        want = shape[axis]
    else:
        raise ArchiveError(f"quantization axis {axis!r} does not fit shape {shape}")
    zeros = parts.get("zeros", 0) if values.get("asymmetric") else 4 * channels
    if channels != want or parts.get("scales") != 4 * channels or zeros != 4 * channels:
        raise ArchiveError(f"{channels} quantization channels do not fit shape {shape} and its scale parts")
