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
import sys
import zlib
from typing import Any

from torch import nn

# the archive is written in _format, _records, _writing, _reading, _info and _rebuild; the "X as X" names are
# re-exported (deepslim.compress.coding.archive.X keeps working for every X it had before the split)
from deepslim.compress.coding._dynamic_parts import dynamic_weights_
from deepslim.compress.coding._format import _HEADER, DYNAMIC_VERSION, FORMAT, MAGIC, VERSION
from deepslim.compress.coding._format import HEADER_BYTES as HEADER_BYTES
from deepslim.compress.coding._format import PART_KIND as PART_KIND
from deepslim.compress.coding._format import READABLE_VERSIONS as READABLE_VERSIONS
from deepslim.compress.coding._info import ArchiveInfo as ArchiveInfo
from deepslim.compress.coding._info import TensorBytes as TensorBytes
from deepslim.compress.coding._info import archive_info as archive_info
from deepslim.compress.coding._reading import _decode_tensor, _part, _read
from deepslim.compress.coding._rebuild import _build, _check_rebuildable
from deepslim.compress.coding._records import _dequantize as _dequantize
from deepslim.compress.coding._records import _inference_tensors, _module_kinds
from deepslim.compress.coding._records import _Tensor as _Tensor
from deepslim.compress.coding._writing import SHARED_MAX_VALUES as SHARED_MAX_VALUES
from deepslim.compress.coding._writing import SPARSE_FIXED_INDEX_BITS as SPARSE_FIXED_INDEX_BITS
from deepslim.compress.coding._writing import SPARSE_MIN_ZEROS as SPARSE_MIN_ZEROS
from deepslim.compress.coding._writing import _encode_tensor, _Payload
from deepslim.compress.coding._writing import _stream_parts as _stream_parts
from deepslim.errors import ArchiveError, DeepSlimError, ModelLoadError


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
