"""What model files need from the layers above ``models``, registered by them: ``models`` imports none of them.

``models`` sits at the bottom of DESIGN.md's layer table, yet its files must hold compressed models: a checkpoint
stores a pruned, quantized or clustered model as the weights its forward pass uses plus the kind of each changed
layer, and ``.dsz`` archives are read and written by :func:`deepslim.models.load_model` / ``save_model``. The
coding package (:mod:`deepslim.compress.coding`) knows how; importing it registers

- a :class:`LayerStates`: a model's inference state and changed layers, how to rebuild them, and the activation
  quantization points a file records;
- an :class:`ArchiveFormat` for the ``.dsz`` suffix: bytes from a model, a model from bytes.

``import deepslim`` (and so any ``import deepslim.models``, which runs the package's ``__init__`` first) imports the
coding package, so the registrations are in place whenever a user can load a model. Without them a plain model
still saves and loads; a file that needs them is refused with a one-line ``ModelLoadError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from deepslim.errors import ModelLoadError

# (state dict, {layer: kind}, {layer: [weight scale, zero point]})
InferenceState = tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]


@dataclass(frozen=True, kw_only=True)
class LayerStates:
    """How files store the layers that compression changes (see :mod:`deepslim.compress.coding.state`)."""

    layer_kinds: Callable[[nn.Module], dict[str, Any]]  # the layers whose kind differs from the architecture's
    inference_state: Callable[[nn.Module], InferenceState]
    rebuild_layers: Callable[[nn.Module, dict[str, Any], dict[str, tuple[int, ...]]], nn.Module]
    points_record: Callable[[nn.Module], dict[str, Any] | None]
    check_points_record: Callable[[Any, str], dict[str, Any]]
    restore_points: Callable[[nn.Module, dict[str, Any], str], None]  # (model, record, source)


@dataclass(frozen=True, kw_only=True)
class ArchiveFormat:
    """A compact file format: ``write(model, example_input) -> bytes``; ``read(data, arch, options, source)``."""

    suffix: str
    write: Callable[[nn.Module, Any], bytes]
    read: Callable[[bytes, str | None, dict[str, Any], str], nn.Module]


_LAYER_STATES: list[LayerStates] = []
_ARCHIVES: dict[str, ArchiveFormat] = {}


def register_layer_states(states: LayerStates) -> None:
    """Install how files store compressed layers (the coding package calls this when it is imported)."""
    _LAYER_STATES[:] = [states]


def register_archive_format(fmt: ArchiveFormat) -> None:
    """Let ``load_model`` / ``save_model`` read and write files ending in ``fmt.suffix``."""
    _ARCHIVES[fmt.suffix] = fmt


def layer_states() -> LayerStates | None:
    """The registered :class:`LayerStates`, or None before the coding package is imported."""
    return _LAYER_STATES[0] if _LAYER_STATES else None


def needed_layer_states(source: str) -> LayerStates:
    """The registered :class:`LayerStates`; a ``ModelLoadError`` naming ``source`` when none is."""
    states = layer_states()
    if states is None:
        raise ModelLoadError(f"{source} holds compressed layers, which need deepslim's compression package: "
                             "import deepslim (or deepslim.compress.coding) before loading it")  # fmt: skip
    return states


def archive_format(suffix: str, source: str) -> ArchiveFormat:
    """The format registered for ``suffix``; a ``ModelLoadError`` naming ``source`` when none is."""
    fmt = _ARCHIVES.get(suffix)
    if fmt is None:
        raise ModelLoadError(f"{source}: no reader or writer for {suffix} files is registered: import deepslim (or "
                             "deepslim.compress.coding) first")  # fmt: skip
    return fmt
