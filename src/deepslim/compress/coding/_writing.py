"""Writing the ``.dsz`` archive's tensors: each tensor's candidate layouts (dense, sparse) and value encodings (raw,
shared, linear), the smallest of which is kept, and its parts appended to the payload."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from deepslim.compress.coding import huffman as huffman_codec
from deepslim.compress.coding._format import _BITS_VIEW, _DTYPES
from deepslim.compress.coding._records import _Tensor
from deepslim.compress.coding.sparse import encode_positions
from deepslim.errors import ConfigError

SPARSE_MIN_ZEROS = 0.3  # below this fraction of zeros the sparse layout is not tried
SHARED_MAX_VALUES = 1 << 16
SPARSE_FIXED_INDEX_BITS = 5  # without Huffman coding: the gap width Deep Compression used for fully connected layers


class _Payload:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        self.chunks.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _bit_patterns(t: torch.Tensor) -> np.ndarray:
    """A tensor's elements as integers holding their exact bit patterns (so -0.0 and NaNs survive)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(_BITS_VIEW[flat.element_size()]).numpy().astype(np.int64)


def _raw_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _stream_parts(stream: np.ndarray, name: str, use_huffman: bool) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A stream of integer symbols as parts (``name`` and ``name_table``) plus what decoding it needs."""
    if use_huffman:
        table, bits, n_bits = huffman_codec.encode(stream)
        return {name: bits, f"{name}_table": huffman_codec.table_to_bytes(table)}, {
            "coding": "huffman", "bits": n_bits, "count": len(stream)}  # fmt: skip
    # fixed width: each symbol minus the smallest, in just enough bits
    lo = int(stream.min()) if len(stream) else 0
    width = max(int(stream.max() - lo).bit_length(), 1) if len(stream) else 1
    header = bytearray()
    huffman_codec.varint((lo << 1) ^ (lo >> 63), header)
    header.append(width)
    fixed = ((stream[:, None] - lo) >> np.arange(width - 1, -1, -1)) & 1
    return {name: np.packbits(fixed.astype(np.uint8).ravel()).tobytes(), f"{name}_table": bytes(header)}, {
        "coding": "fixed", "bits": len(stream) * width, "count": len(stream)}  # fmt: skip


def _value_candidates(item: _Tensor, picks: np.ndarray | None,
                      use_huffman: bool) -> list[tuple[dict[str, Any], dict[str, bytes], dict]]:  # fmt: skip
    """Ways to store the values at ``picks`` (all values when None): (encoding, parts, streams) each."""
    t = item.value
    if item.linear is not None:
        codes, scale, zero, axis, bits = item.linear
        flat = codes.reshape(-1).numpy().astype(np.int64)
        sel = flat if picks is None else flat[picks]
        parts, stream = _stream_parts(sel, "codes", use_huffman)
        parts["scales"] = _raw_bytes(scale.float())
        if bool((zero != 0).any()):
            parts["zeros"] = _raw_bytes(zero.to(torch.int32))
        enc: dict[str, Any] = {"kind": "linear", "bits": bits, "axis": axis, "channels": int(scale.numel()),
               "asymmetric": "zeros" in parts}  # fmt: skip
        if item.fp32 is not None:  # a dynamic int8 weight: its fp32 channels beside the codes
            enc["dynamic"] = True
            parts.update({f"fp32_{k}": _raw_bytes(v.float()) for k, v in item.fp32.items()})
        return [(enc, parts, {"codes": stream})]
    patterns = _bit_patterns(t)
    sel = patterns if picks is None else patterns[picks]
    raw = _raw_bytes(t.reshape(-1)[torch.from_numpy(picks)] if picks is not None else t)
    candidates: list[tuple[dict[str, Any], dict[str, bytes], dict]] = [({"kind": "raw"}, {"raw": raw}, {})]
    if t.is_floating_point() and len(sel):
        book, index = np.unique(sel, return_inverse=True)
        size = t.element_size()
        estimate = len(book) * (size + 2) + len(sel) * math.log2(max(len(book), 2)) / 8  # codebook, table, codes
        if len(book) <= SHARED_MAX_VALUES and estimate < len(sel) * size:
            parts, stream = _stream_parts(index.astype(np.int64), "codes", use_huffman)
            parts["codebook"] = book.astype(f"<i{size}").tobytes()
            candidates.append(({"kind": "shared", "size": int(len(book))}, parts, {"codes": stream}))
    return candidates


def _zero_pattern(item: _Tensor) -> np.ndarray:
    """Which elements are the layout's implicit zeros (+0.0 bit patterns, or the zero point's code)."""
    if item.linear is not None:
        codes, _, zero, axis, _ = item.linear
        z = zero if axis is None else zero.view([-1] + [1] * (codes.ndim - 1))
        return (codes == z).reshape(-1).numpy()
    return _bit_patterns(item.value) == 0


def _best_index_bits(positions: np.ndarray) -> int:
    best, best_bits = 8, None
    for b in range(2, 13):
        gaps = encode_positions(positions, b)
        _, counts = np.unique(gaps, return_counts=True)
        lengths = huffman_codec.code_lengths(np.arange(len(counts)), counts).lengths
        # counts in canonical order are not aligned with lengths; the total only needs the sorted pairing
        total = int(np.sort(counts)[::-1].astype(np.int64) @ np.sort(lengths).astype(np.int64)) + 2 * len(counts) * 8
        if best_bits is None or total < best_bits:
            best, best_bits = b, total
    return best


def _encode_tensor(item: _Tensor, payload: _Payload, use_huffman: bool) -> dict[str, Any]:
    t = item.value
    entry: dict[str, Any] = {"name": item.name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if entry["dtype"] not in _DTYPES:
        raise ConfigError(f"tensor {item.name} has dtype {t.dtype}, which the archive does not store")
    options: list[tuple[dict[str, Any], dict[str, Any], dict[str, bytes], dict]] = [
        ({"layout": "dense"}, enc, parts, streams)
               for enc, parts, streams in _value_candidates(item, None, use_huffman)]  # fmt: skip
    zeros = _zero_pattern(item)
    if t.numel() >= 16 and zeros.mean() >= SPARSE_MIN_ZEROS:
        positions = np.flatnonzero(~zeros)
        bits = _best_index_bits(positions) if use_huffman else SPARSE_FIXED_INDEX_BITS
        index_parts, index_stream = _stream_parts(encode_positions(positions, bits), "index", use_huffman)
        layout: dict[str, Any] = {"layout": "sparse", "index_bits": bits, "nonzeros": int(len(positions))}
        for enc, parts, streams in _value_candidates(item, positions, use_huffman):
            options.append((layout, enc, {**index_parts, **parts}, {**streams, "index": index_stream}))
    layout, enc, parts, streams = min(options, key=lambda o: sum(len(b) for b in o[2].values()))
    entry.update(layout)
    entry["values"] = enc
    entry["streams"] = streams
    entry["parts"] = {name: payload.add(data) for name, data in parts.items()}
    return entry
