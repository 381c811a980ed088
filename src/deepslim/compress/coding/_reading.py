"""Reading the ``.dsz`` archive: the header and manifest validated (sizes checked before anything is allocated),
each tensor's parts decoded back into the exact tensor that was written."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np
import torch

from deepslim.compress.coding import huffman as huffman_codec
from deepslim.compress.coding._format import (
    _BITS_VIEW,
    _DTYPES,
    _HEADER,
    FORMAT,
    HEADER_BYTES,
    MAGIC,
    PART_KIND,
    READABLE_VERSIONS,
)
from deepslim.compress.coding._limits import check_tensors, inflate_manifest
from deepslim.compress.coding._records import _dequantize
from deepslim.compress.coding.sparse import decode_positions
from deepslim.errors import ArchiveError


def _read(data: bytes) -> tuple[int, int, dict[str, Any], memoryview]:
    """(version, manifest bytes, manifest, payload) of a validated archive."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ArchiveError("not a deepslim archive (bad magic: the file does not start with the .dsz signature)")
    if len(data) < HEADER_BYTES:
        raise ArchiveError(f"archive truncated: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
    _, version, _flags, m_len, p_len, crc = _HEADER.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise ArchiveError(f"unsupported archive version {version} (this deepslim reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))})")  # fmt: skip
    want = HEADER_BYTES + m_len + p_len
    if len(data) < want:
        raise ArchiveError(f"archive truncated: {len(data)} of {want} bytes")
    if len(data) > want:
        raise ArchiveError(f"archive has {len(data) - want} unexpected bytes after its payload")
    body = memoryview(data)[HEADER_BYTES:]
    if zlib.crc32(body) != crc:
        raise ArchiveError("archive checksum mismatch: the file is corrupted")
    try:
        manifest = json.loads(inflate_manifest(body[:m_len]))
    except (ValueError, RecursionError) as exc:
        raise ArchiveError(f"archive manifest unreadable: {str(exc)[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("archive manifest is not a deepslim manifest")
    check_tensors(manifest, p_len, len(data), PART_KIND)  # every declared size, before anything is allocated
    return version, m_len, manifest, body[m_len:]


def _part(payload: memoryview, entry: dict[str, Any], name: str) -> bytes:
    try:
        offset, length = entry["parts"][name]
    except (KeyError, TypeError, ValueError):
        raise ArchiveError(f"tensor {entry.get('name')}: part {name!r} missing from the manifest") from None
    if offset < 0 or length < 0 or offset + length > len(payload):
        raise ArchiveError(f"tensor {entry.get('name')}: part {name!r} lies outside the payload")
    return bytes(payload[offset : offset + length])


def _stream(payload: memoryview, entry: dict[str, Any], name: str) -> np.ndarray:
    spec = entry["streams"][name]
    table, data = _part(payload, entry, f"{name}_table"), _part(payload, entry, name)
    n_bits, count = spec["bits"], spec["count"]
    if spec["coding"] == "huffman":
        return huffman_codec.decode(huffman_codec.table_from_bytes(table), data, n_bits, count)
    if spec["coding"] != "fixed":
        raise ArchiveError(f"tensor {entry['name']}: unknown stream coding {spec['coding']!r}")
    zig, pos = huffman_codec.read_varint(table, 0)
    if pos + 1 != len(table) or not 1 <= table[pos] <= 64:
        raise ArchiveError(f"tensor {entry['name']}: fixed-width stream header malformed")
    lo, width = (zig >> 1) ^ -(zig & 1), table[pos]
    if n_bits != count * width or n_bits > len(data) * 8:
        raise ArchiveError(f"tensor {entry['name']}: fixed-width stream truncated")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n_bits].astype(np.int64).reshape(count, width)
    return bits @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64)) + lo


def _from_patterns(patterns: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    ints = torch.from_numpy(patterns.astype(f"<i{size}"))
    out = ints.view(_BITS_VIEW[size]).view(torch.uint8 if dtype == torch.bool else dtype)
    return out.to(torch.bool) if dtype == torch.bool else out


def _decode_tensor(entry: dict[str, Any], payload: memoryview) -> tuple[torch.Tensor, tuple | None]:
    """(the tensor, linear-quantization parameters (scale, zero, axis) or None)."""
    name = entry["name"]
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ArchiveError(f"tensor {name}: unknown dtype {entry['dtype']!r}")
    shape = tuple(entry["shape"])
    numel = math.prod(shape)
    positions = None
    if entry["layout"] == "sparse":
        positions = decode_positions(_stream(payload, entry, "index"), entry["index_bits"], numel)
        if len(positions) != entry["nonzeros"]:
            raise ArchiveError(f"tensor {name}: index stream gives {len(positions)} nonzeros, not {entry['nonzeros']}")
    elif entry["layout"] != "dense":
        raise ArchiveError(f"tensor {name}: unknown layout {entry['layout']!r}")
    count = numel if positions is None else len(positions)
    enc = entry["values"]
    kind = enc.get("kind")
    quant = None
    if kind == "raw":
        raw = _part(payload, entry, "raw")
        size = torch.empty((), dtype=dtype).element_size()
        if len(raw) != count * size:
            raise ArchiveError(f"tensor {name}: {len(raw)} raw bytes for {count} values")
        values = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype) if raw else torch.empty(0, dtype=dtype)
    elif kind == "shared":
        size = torch.empty((), dtype=dtype).element_size()
        book = np.frombuffer(_part(payload, entry, "codebook"), dtype=f"<i{size}")
        index = _stream(payload, entry, "codes")
        if len(index) != count or (len(index) and index.max() >= len(book)) or (len(index) and index.min() < 0):
            raise ArchiveError(f"tensor {name}: codebook indices do not fit its {len(book)}-entry codebook")
        values = _from_patterns(book[index].astype(np.int64), dtype)
    elif kind == "linear":
        codes = torch.from_numpy(_stream(payload, entry, "codes")).to(torch.int32)
        scale = torch.frombuffer(bytearray(_part(payload, entry, "scales")), dtype=torch.float32)
        zero = (torch.frombuffer(bytearray(_part(payload, entry, "zeros")), dtype=torch.int32) if enc["asymmetric"]
                else torch.zeros(scale.shape, dtype=torch.int32))  # fmt: skip
        if len(codes) != count or len(scale) != enc["channels"] or len(zero) != len(scale):
            raise ArchiveError(f"tensor {name}: linear codes or scales have the wrong length")
        axis = enc["axis"]
        full = torch.empty(numel, dtype=torch.int32)
        if positions is not None:
            zeros = zero.view(-1, 1).expand(shape[0], numel // shape[0]) if axis is not None else zero.expand(numel)
            full.copy_(zeros.reshape(-1))
            full[torch.from_numpy(positions)] = codes
        else:
            full = codes
        full = full.view(shape)
        if axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        quant = (scale.reshape(-1), zero.reshape(-1), axis)
        return _dequantize(full, scale, zero, axis).to(dtype), quant
    else:
        raise ArchiveError(f"tensor {name}: unknown value encoding {kind!r}")
    if positions is None:
        return values.reshape(shape).clone(), quant
    if len(values) != len(positions):
        raise ArchiveError(f"tensor {name}: {len(values)} values for {len(positions)} positions")
    out = torch.zeros(numel, dtype=dtype)
    out[torch.from_numpy(positions)] = values
    return out.view(shape), quant
