"""The version-2 part of the ``.dsz`` archive: a dynamic int8 layer's weight, stored as the int8 codes and steps of
its int8 product plus its fp32 columns/rows (parts ``fp32_columns`` / ``fp32_rows``, float32, row-major), is turned
back into the float weight the layer holds. Kept apart from the archive's general reader (_reading.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from deepslim.errors import ArchiveError

DYNAMIC_VERSION = 2  # an archive holding dynamic int8 weights (a version-1 reader would misread them: it refuses)


def dynamic_weights_(entries: list[dict[str, Any]], kinds: Any, state: dict[str, torch.Tensor], version: int,
                     part: Callable[[dict[str, Any], str], bytes]) -> None:  # fmt: skip
    """Replace, in ``state``, each dynamic entry's decoded codes-times-steps by the layer's float weight; ``part``
    reads an entry's named part. A dynamic entry in an archive older than version 2 is malformed (ArchiveError):
    version-1 readers would misread it, so no writer puts one there."""
    for entry in entries:
        if not entry["values"].get("dynamic"):
            continue
        if version < DYNAMIC_VERSION:
            raise ArchiveError(f"tensor {entry['name']}: a dynamic int8 weight in a version-{version} archive "
                               f"(they need version {DYNAMIC_VERSION}): the file is malformed")  # fmt: skip
        state[entry["name"]] = _dynamic_weight(entry, state[entry["name"]], kinds, part)


def _dynamic_weight(entry: dict[str, Any], value: torch.Tensor, kinds: Any,
                    part: Callable[[dict[str, Any], str], bytes]) -> torch.Tensor:  # fmt: skip
    """The float weight of a dynamic int8 layer from its entry: the codes times their steps (``value``), divided by
    the layer's input scales, its fp32 channels put back (:func:`deepslim.compress.quantize.weight_from_codes`);
    ArchiveError when they do not fit its record."""
    from deepslim.compress.quantize import weight_from_codes

    name, layer = entry["name"], entry["name"].rpartition(".")[0]
    fp32 = {}
    for kind in ("columns", "rows"):  # float32, row-major: (out, k) columns, (k, in) rows
        if f"fp32_{kind}" in entry["parts"]:
            raw = part(entry, f"fp32_{kind}")
            if len(raw) % 4:
                raise ArchiveError(f"tensor {name}: its fp32 {kind} are {len(raw)} bytes, not float32 values")
            fp32[kind] = torch.frombuffer(bytearray(raw), dtype=torch.float32) if raw else torch.empty(0)
    try:
        return weight_from_codes(value, kinds.get(layer) if isinstance(kinds, dict) else None, fp32)
    except ValueError as exc:
        raise ArchiveError(f"tensor {name}: malformed dynamic int8 weight: {exc}") from None
