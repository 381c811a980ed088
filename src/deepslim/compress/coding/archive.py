"""The ``.dsz`` archive: a compressed model on disk, restored bit for bit.

Layout (all integers little-endian; docs/archive-format.md is the full specification)::

    header   28 bytes: magic b"\\x89DSZ\\r\\n\\x1a\\n", u16 version, u16 flags (0),
             u32 manifest bytes, u64 payload bytes, u32 CRC-32 of manifest + payload
    manifest zlib-compressed UTF-8 JSON: architecture, module kinds, and per tensor its shape, dtype, layout,
             value encoding and the (offset, length) of each of its parts in the payload
    payload  the parts, back to back

Each tensor of the model's inference state (the weights its forward pass uses: a pruned layer's masked weight, a
clustered layer's codebook lookup, a quantized layer's integer codes) is stored with a *layout* — ``dense``, or
``sparse`` with Deep Compression's relative indices — and a *value encoding*: ``raw`` bytes, ``shared`` (a codebook
plus a Huffman-coded index per value) or ``linear`` (Huffman-coded integer codes plus per-channel scales and zero
points). The encoder picks, per tensor, whichever is smallest; all choices are exact.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim.compress.coding import _dynamic_parts
from deepslim.compress.coding import huffman as huffman_codec
from deepslim.compress.coding._dynamic_parts import dynamic_weights_
from deepslim.compress.coding._limits import check_tensors, inflate_manifest
from deepslim.compress.coding.sparse import decode_positions, encode_positions
from deepslim.errors import ArchiveError, ConfigError, DeepSlimError, ModelLoadError

MAGIC = b"\x89DSZ\r\n\x1a\n"
VERSION = 1
DYNAMIC_VERSION = _dynamic_parts.DYNAMIC_VERSION  # holds dynamic int8 weights (version-1 readers refuse it)
READABLE_VERSIONS = (VERSION, DYNAMIC_VERSION)
_HEADER = struct.Struct("<8sHHIQI")
HEADER_BYTES = _HEADER.size
FORMAT = "deepslim-archive"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
           "uint8": torch.uint8, "bool": torch.bool}  # fmt: skip
_BITS_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # a dtype's bit patterns as integers
# part name -> the accounting category it is reported under
PART_KIND = {"index": "indices", "index_table": "tables", "codes": "codes", "codes_table": "tables",
             "codebook": "codebooks", "scales": "scales", "zeros": "scales", "raw": "raw", "fp32_columns": "raw",
             "fp32_rows": "raw"}  # fmt: skip
SPARSE_MIN_ZEROS = 0.3  # below this fraction of zeros the sparse layout is not tried
SHARED_MAX_VALUES = 1 << 16
SPARSE_FIXED_INDEX_BITS = 5  # without Huffman coding: the gap width Deep Compression used for fully connected layers


# -- what goes in: the model's inference state ---------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    value: torch.Tensor  # what the forward pass uses
    # linear quantization: (codes, scale, zero point, channel axis, bits)
    linear: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None, int] | None = None
    # a dynamic int8 weight's entries computed in fp32 ("columns", "rows"; see _dynamic.fp32_channels): its value is
    # the float weight, its codes those of the int8 product
    fp32: dict[str, torch.Tensor] | None = None


def _module_kinds(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Modules whose kind differs from the plain architecture: quantized layers, fp16 layers, folded batch norms."""
    from deepslim.compress.quantize import dynamic_state
    from deepslim.compress.quantize.linear import QuantMixin

    kinds: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):  # a dynamic int8 layer adds its fp32 and scaled channels
            kinds[name] = {"kind": "quant", "bits": m.bits, "act_bits": m.act_bits, "per_channel": m.per_channel,
                           "symmetric": m.symmetric, **dynamic_state(m)}  # fmt: skip
        elif isinstance(m, nn.Identity):
            kinds[name] = {"kind": "identity"}
        elif getattr(m, "deepslim_half", None):
            kinds[name] = {"kind": "half", "dtype": m.deepslim_half}
    return kinds


def _inference_tensors(model: nn.Module) -> list[_Tensor]:
    from deepslim.compress.quantize import fp32_channels
    from deepslim.compress.quantize.linear import QuantMixin

    out = []
    for name, m in model.named_modules():
        if isinstance(m, parametrize.ParametrizationList) or ".parametrizations." in f".{name}.":
            continue  # a parametrization's own tensors (originals, masks, indices) are represented by the result
        prefix = f"{name}." if name else ""
        params = dict(m.named_parameters(recurse=False))
        if parametrize.is_parametrized(m):
            params.update(_parametrized_tensors(m, name))
        for key, t in sorted(params.items()):  # one order whether or not a tensor is parametrized
            if isinstance(m, QuantMixin) and key == "weight_scale":
                continue  # folded into the weight's codes
            item = _Tensor(prefix + key, t.detach())
            if isinstance(m, QuantMixin) and key == "weight" and not m.dynamic:
                codes, scale, zero, axis = m.weight_codes()
                item.linear = (codes, scale, zero, axis, m.bits)
                item.value = _dequantize(codes, scale, zero, axis)
            elif isinstance(m, QuantMixin) and key == "weight" and t.dtype == torch.float32:  # dynamic int8
                item.linear = (*m.weight_codes(), m.bits)
                item.fp32 = fp32_channels(m)  # the value stays the float weight: .pt checkpoints keep it
            out.append(item)
        for key, t in m.named_buffers(recurse=False):
            if key not in m._non_persistent_buffers_set:
                out.append(_Tensor(prefix + key, t.detach()))
    return out


def _parametrized_tensors(m: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors that stand for ``m``'s parametrized ones: the computed tensor for deepslim's encodings (masks,
    codebooks, codes), the originals for another library's parametrization (weight_norm, spectral_norm), so that the
    archive's names are the architecture's; ArchiveError when both act on one tensor."""
    out = {}
    plists: Any = m.parametrizations  # a ModuleDict of ParametrizationLists (torch types it as Tensor | Module)
    for key, plist in plists.items():
        ours = [type(p).__name__ for p in plist if type(p).__module__.startswith("deepslim.")]
        foreign = [type(p).__name__ for p in plist if not type(p).__module__.startswith("deepslim.")]
        if not foreign:
            out[key] = getattr(m, key)
        elif not ours:
            out.update({f"parametrizations.{key}.{n}": t for n, t in plist.named_parameters(recurse=False)})
        else:
            raise ArchiveError(f"layer {name or type(m).__name__}: its {key} is computed by {', '.join(foreign)} "
                               f"and then deepslim's {', '.join(ours)}; the archive stores one or the other: remove "
                               f"the {foreign[0]} before compressing (torch.nn.utils.parametrize."
                               f"remove_parametrizations(layer, {key!r}))")  # fmt: skip
    return out


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``(codes − zero) · scale`` in float32, exactly as the fake-quantized forward computes it."""
    q = codes.float()
    if axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.view(shape), zero.view(shape)
    return (q - zero) * scale


# -- writing ---------------------------------------------------------------------------------------------------------


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
               for enc, parts, streams in _value_candidates(item, None, use_huffman)]
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


def encode(model: nn.Module, *, huffman: bool = True, example_input: Any = None) -> bytes:
    """The ``.dsz`` archive of ``model``: everything needed to rebuild it with exactly the weights it runs with.

    ``huffman=False`` writes every index and code stream at a fixed width instead (Deep Compression's table reports
    the ratio before and after Huffman coding; this measures the "before"). The manifest records the model's
    architecture (zoo entry or ``file.py:factory``), its preprocessing, and the shape of ``example_input`` (else of
    the input the model records), so that the decoded model can be exported.
    """
    from deepslim.compress.coding.state import points_record
    from deepslim.models import fresh_architecture, model_records

    if sys.byteorder != "little":
        raise ArchiveError("the archive is written on little-endian machines only")
    records = model_records(model, example_input)
    tensors = _inference_tensors(model)
    kinds = _module_kinds(model)
    fresh = fresh_architecture(model)  # an unknown zoo name or options that no longer build are refused here
    if fresh is not None:
        what = records["factory"]["factory"] if "factory" in records else records["arch"]["name"]
        _check_rebuildable(fresh, kinds, tensors, what)
    payload = _Payload()
    entries = [_encode_tensor(item, payload, huffman) for item in tensors]
    manifest = {"format": FORMAT, "arch": records.pop("arch", None), **records, "modules": kinds, "tensors": entries}
    points = points_record(model)  # activation quantization points: re-inserted when the model is rebuilt
    if points is not None:
        manifest["points"] = points
    blob = zlib.compress(json.dumps(manifest, separators=(",", ":")).encode(), 9)
    body = blob + b"".join(payload.chunks)
    version = DYNAMIC_VERSION if any(t.fp32 is not None for t in tensors) else VERSION
    header = _HEADER.pack(MAGIC, version, 0, len(blob), payload.size, zlib.crc32(body))
    return header + body


def _check_rebuildable(fresh: nn.Module, kinds: dict[str, Any], tensors: list[_Tensor], what: str) -> None:
    """That the architecture ``fresh`` (on the meta device), given ``kinds``, has exactly the model's tensors."""
    with torch.device("meta"):
        rebuilt = _build(fresh, kinds, {t.name: tuple(t.value.shape) for t in tensors})
    have, want = {t.name for t in tensors}, set(rebuilt.state_dict())
    if have != want:
        extra = sorted(have ^ want)[:3]
        raise ConfigError(f"the model's layers no longer match its architecture {what!r} (e.g. {', '.join(extra)}); "
                          "encode a model whose layer tree is its architecture's (prune, quantize and cluster keep "
                          "it; factorize does not), or save it as a .pt2 program")  # fmt: skip


# -- reading ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorBytes:
    name: str
    shape: tuple[int, ...]
    layout: str
    encoding: str
    parts: dict[str, int]  # accounting category -> bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class ArchiveInfo:
    """Byte accounting of an archive: header, manifest and every tensor's parts."""

    version: int
    total_bytes: int
    header_bytes: int  # fixed header + compressed manifest
    tensors: tuple[TensorBytes, ...]
    arch: dict[str, Any] | None = None
    by_part: dict[str, int] = field(default_factory=dict)

    def dense_fp32_bytes(self) -> int:
        """What the same tensors take as fp32 (the reference for the compression ratio)."""
        return sum(4 * math.prod(t.shape) for t in self.tensors)

    @property
    def ratio(self) -> float:
        return self.dense_fp32_bytes() / self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "total_bytes": self.total_bytes, "header_bytes": self.header_bytes,
                "by_part": dict(self.by_part), "dense_fp32_bytes": self.dense_fp32_bytes(), "ratio": self.ratio,
                "tensors": [{"name": t.name, "shape": list(t.shape), "layout": t.layout, "encoding": t.encoding,
                             "parts": t.parts, "bytes": t.total} for t in self.tensors]}  # fmt: skip

    def __str__(self) -> str:
        lines = [f"{'tensor':<32} {'shape':<18} {'layout':<7} {'values':<7} {'bytes':>9}"]
        for t in self.tensors:
            lines.append(f"{t.name:<32} {'x'.join(map(str, t.shape)) or '()':<18} {t.layout:<7} {t.encoding:<7} "
                         f"{t.total:>9,}")  # fmt: skip
        parts = ", ".join(f"{k} {v:,}" for k, v in self.by_part.items())
        lines.append(f"total {self.total_bytes:,} B ({parts}); fp32 {self.dense_fp32_bytes():,} B; "
                     f"ratio {self.ratio:.1f}x")  # fmt: skip
        return "\n".join(lines)


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


def archive_info(data: bytes) -> ArchiveInfo:
    """Per-tensor and per-part byte accounting of an archive (validated as :func:`decode` does)."""
    version, m_len, manifest, _ = _read(data)
    tensors, by_part = [], {"header": HEADER_BYTES + m_len}
    for e in manifest["tensors"]:
        parts: dict[str, int] = {}
        for name, (_, length) in e["parts"].items():
            parts[PART_KIND[name]] = parts.get(PART_KIND[name], 0) + length
            by_part[PART_KIND[name]] = by_part.get(PART_KIND[name], 0) + length
        tensors.append(TensorBytes(e["name"], tuple(e["shape"]), e["layout"], e["values"]["kind"], parts))
    return ArchiveInfo(version, len(data), HEADER_BYTES + m_len, tuple(tensors), manifest.get("arch"), by_part)


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


def _build(model: nn.Module, kinds: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """``model`` (a fresh architecture) resized to ``shapes`` and with its modules turned into the recorded kinds."""
    from deepslim.compress.quantize import Calibration, apply_half, set_dynamic_state
    from deepslim.compress.quantize.linear import QUANTIZABLE
    from deepslim.models import resize_like_

    for name, spec in kinds.items():
        if spec["kind"] == "identity":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    resize_like_(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    for name, spec in kinds.items():
        m = model.get_submodule(name)
        if spec["kind"] == "quant":
            if type(m) not in QUANTIZABLE:
                raise ArchiveError(f"module {name}: a {type(m).__name__} cannot hold linear quantization")
            m.__class__ = QUANTIZABLE[type(m)]
            quant: Any = m  # a QuantMixin layer now
            quant.init_quant(spec["bits"], spec["act_bits"], spec["per_channel"], spec["symmetric"], False)
            try:
                set_dynamic_state(quant, spec)
            except ValueError as exc:
                raise ArchiveError(f"module {name}: malformed dynamic int8 record: {exc}") from None
            if spec.get("dynamic"):
                setattr(model, "deepslim_calibration", Calibration.DYNAMIC)  # noqa: B010  (what the report reads)
        elif spec["kind"] == "half":
            apply_half(m, spec["dtype"])
    # folded convolutions gained a bias
    for key in shapes:
        owner, _, attr = key.rpartition(".")
        if attr == "bias":
            try:
                m = model.get_submodule(owner)
            except AttributeError:
                continue  # not a layer of the architecture: the caller's key comparison reports it
            if getattr(m, "bias", "absent") is None:
                m.bias = nn.Parameter(torch.empty(shapes[key]))
    return model


def decode(data: bytes, *, model: nn.Module | None = None, arch: str | None = None,
           options: dict[str, Any] | None = None, source: str = "the archive") -> nn.Module:  # fmt: skip
    """The model stored in archive ``data``, with exactly the encoded weights.

    The architecture comes from the archive's zoo record. A model built by a ``file.py:factory`` is rebuilt only
    when the caller names the factory again, ``arch="file.py:factory"`` (deepslim never imports code that a file
    names); ``arch`` may also be a zoo name, with ``options`` over the recorded ones. Or pass ``model`` to load the
    tensors into a module of your own (it must have the archive's tensors, at the archive's shapes).
    """
    from deepslim.compress.coding.state import check_points_record, restore_points_
    from deepslim.models import build_architecture, check_records, load_state_into, set_records

    version, _, manifest, payload = _read(data)
    try:
        state, quant = {}, {}
        for entry in manifest["tensors"]:
            state[entry["name"]], q = _decode_tensor(entry, payload)
            if q is not None:
                quant[entry["name"].rpartition(".")[0]] = q
        kinds = manifest.get("modules", {})
        dynamic_weights_(manifest["tensors"], kinds, state, version, lambda e, n: _part(payload, e, n))
        records = check_records(manifest, source=source)
        points = check_points_record(manifest["points"], source) if manifest.get("points") is not None else None
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as exc:
        raise ArchiveError(f"archive manifest malformed: {type(exc).__name__}: {exc}") from None
    except ModelLoadError as exc:
        raise ArchiveError(str(exc)) from None
    built = model is None
    if model is None:
        try:
            base = build_architecture(records, arch, options or {}, source=source)
            model = _build(base, kinds, {k: tuple(v.shape) for k, v in state.items()})
        except ModelLoadError:
            raise  # e.g. a recorded factory, which the caller must name
        except (DeepSlimError, AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArchiveError(f"the archive's architecture cannot be rebuilt: {type(exc).__name__}: {exc}") from None
    try:
        load_state_into(model, state, source="archive")
    except ModelLoadError as exc:
        raise ArchiveError(str(exc)) from None
    for name, (scale, zero, _) in quant.items():
        layer: Any = model.get_submodule(name)  # a quantized layer
        layer.fixed_weight_params = (scale.view(-1), zero.view(-1))
    set_records(model, records, "input", "preprocessing")
    if points is not None and built:
        try:
            restore_points_(model, points, source=source)
        except ModelLoadError as exc:
            raise ArchiveError(str(exc)) from None
    return model.eval()
