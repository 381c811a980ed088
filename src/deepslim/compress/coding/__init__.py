"""Entropy coding and the compact archive (Deep Compression's last stage).

Importing this package registers, with :mod:`deepslim.models.formats`, how model files store compressed layers and
the ``.dsz`` archive format, so that ``load_model`` / ``save_model`` handle them without ``models`` importing
``compress``.
"""

from typing import Any

from torch import nn

from deepslim.compress.coding import state
from deepslim.compress.coding.archive import ArchiveInfo, archive_info, decode, encode
from deepslim.compress.coding.huffman import HuffmanTable, code_lengths
from deepslim.models.formats import ArchiveFormat, LayerStates, register_archive_format, register_layer_states

__all__ = ["ArchiveInfo", "HuffmanTable", "archive_info", "code_lengths", "decode", "encode"]


def _write_dsz(model: nn.Module, example_input: Any) -> bytes:
    return encode(model, example_input=example_input)


def _read_dsz(data: bytes, arch: str | None, options: dict[str, Any], source: str) -> nn.Module:
    return decode(data, arch=arch, options=options, source=source)


def _restore_points(model: nn.Module, record: dict[str, Any], source: str) -> None:
    state.restore_points_(model, record, source=source)


register_layer_states(LayerStates(layer_kinds=state.layer_kinds, inference_state=state.inference_state,
                                  rebuild_layers=state.rebuild_layers, points_record=state.points_record,
                                  check_points_record=state.check_points_record,
                                  restore_points=_restore_points))  # fmt: skip
register_archive_format(ArchiveFormat(suffix=".dsz", write=_write_dsz, read=_read_dsz))
