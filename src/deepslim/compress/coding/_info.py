"""Byte accounting of a ``.dsz`` archive (``deepslim.archive_info``): per tensor and per part category, what the
header, the manifest and each tensor's parts take, and the ratio to the same tensors in fp32."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from deepslim.compress.coding._format import HEADER_BYTES, PART_KIND
from deepslim.compress.coding._reading import _read


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
