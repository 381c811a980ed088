"""Checkpoints (``.pt``) and ``torch.export`` programs (``.pt2``): writing them, and reading them back.

Checkpoint format (``torch.save`` of plain containers and tensors, read with ``weights_only=True``)::

    {"format": "deepslim-checkpoint", "version": 2, "state_dict": {name: tensor},
     "resized": bool,                       # layers resized by structured pruning: rebuild at the stored sizes
     "modules": {layer: kind},              # quantized layers, folded batch norms, fp16 layers (as in .dsz)
     "quant": {layer: [scale, zero]},       # the fixed weight quantization of each quantized layer
     "points": {...} | None,                # activation quantization points (see deepslim.models.formats)
     "arch" | "factory" | "input" | "preprocessing": records (see _records)}

A model with deepslim's layers (quantized, masked, clustered, fp16) is stored as its *inference state* — the
weights its forward pass uses, as in a ``.dsz`` archive — so it loads back with exactly the same outputs. Version 1
files (``arch``, ``state_dict``, ``resized``) are still read. docs/model-files.md describes all three formats.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim._io import atomic_path
from deepslim._modes import inference_mode
from deepslim.errors import ArchiveError, ConfigError, ModelLoadError
from deepslim.models._records import check_records, fresh_architecture, model_records, set_records
from deepslim.models._registry import recorded_example_input
from deepslim.models._safe import verify_checkpoint
from deepslim.models.formats import layer_states, needed_layer_states

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepslim-checkpoint"
CHECKPOINT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
PROGRAM_RECORDS = "deepslim.json"  # the .pt2 member (extra file) that holds the records
_PROGRAM_RECORD_KEYS = ("input", "preprocessing")  # a program is its own architecture
_MAX_RECORD_BYTES = 1 << 16


@dataclass(frozen=True)
class Checkpoint:
    state: dict[str, torch.Tensor]
    records: dict[str, Any] = field(default_factory=dict)  # checked: arch, factory, input, preprocessing
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    quant: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    resized: bool = False
    points: dict[str, Any] | None = None  # activation quantization points (compress.coding.state)


# -- checkpoints -----------------------------------------------------------------------------------------------------


def _inference_state(model: nn.Module, fresh: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                                                         dict[str, list]]:  # fmt: skip
    """(state, module kinds, fixed quantization): the state dict of a plain model, else what the forward uses.

    A model is plain when no layer changed kind and it has no parametrizations beyond those of its architecture
    (``fresh``; a weight_norm the architecture itself applies stays as it is).
    """
    states = layer_states()
    if states is None or not states.layer_kinds(model):  # without the coding package no layer can have changed
        state = model.state_dict()
        if not any(parametrize.is_parametrized(m) for m in model.modules()):
            return state, {}, {}
        if fresh is not None and fresh.state_dict().keys() == state.keys():
            return state, {}, {}
    if states is None:
        raise ConfigError("the model has parametrized layers that only deepslim's compression package can store: "
                          "import deepslim before saving it")  # fmt: skip
    return states.inference_state(model)


def _check_structure(fresh: nn.Module, kinds: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> bool:
    """Whether ``state`` has the architecture's tensors at other sizes; an error if its tensors differ."""
    base = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    states = layer_states()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    with torch.device("meta"):
        rebuilt = (states.rebuild_layers(fresh, kinds, shapes) if states is not None else fresh).state_dict()
    if rebuilt.keys() != state.keys():
        extra = sorted(set(state) ^ set(rebuilt))[:3]
        raise ConfigError(f"the model's layers no longer match its architecture {what} (e.g. {', '.join(extra)}): "
                          "save it as a .pt2 program (a .pt2 path, with example_input)")  # fmt: skip
    return any(base[k] != tuple(v.shape) for k, v in state.items() if k in base)


def write_checkpoint(model: nn.Module, dest: Path, example_input: Any = None) -> None:
    records = model_records(model, example_input)
    fresh = fresh_architecture(model)
    state, kinds, quant = _inference_state(model, fresh)
    if fresh is not None:
        what = repr(records["factory"]["factory"] if "factory" in records else records["arch"]["name"])
        resized = _check_structure(fresh, kinds, state, what)
    else:  # a factory this process cannot rebuild: let loading take the stored sizes
        resized = "factory" in records
    states = layer_states()
    points = states.points_record(model) if states is not None else None
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **records, "state_dict": state,
               "modules": kinds, "quant": quant, "resized": resized, "points": points}  # fmt: skip
    with atomic_path(dest) as tmp:
        torch.save(payload, tmp)


def not_a_file(path: Path, what: str) -> ModelLoadError:
    """The error for a model or weights path that is not a readable file: missing, or a directory."""
    if path.is_dir():
        return ModelLoadError(f"{what} {str(path)!r} is a directory, not a file: name the file in it")
    return ModelLoadError(f"{what} {str(path)!r} does not exist")


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise not_a_file(path, "weights file")
    # weights_only=True refuses foreign globals, but a legacy pickle's declared storage sizes are allocated before
    # anything is checked: the file is scanned first (zip bombs, storages larger than the file, foreign globals)
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" in detail:
            raise ModelLoadError(
                f"{path} holds Python objects other than tensors ({detail.split(':')[1].split(' was')[0].strip()}); "
                "deepslim only loads weights (weights_only=True). Save model.state_dict() or use deepslim.save_model"
            ) from exc
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint that loads with weights_only=True "
                             f"({detail})") from exc  # fmt: skip
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint: {exc}") from exc


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint file (deepslim's, or a plain state dict), refusing anything but tensors and containers."""
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    if obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") not in _READABLE_VERSIONS:
            raise ModelLoadError(f"{path}: checkpoint version {obj.get('version')} is not supported (this deepslim "
                                 f"reads versions {', '.join(map(str, _READABLE_VERSIONS))})")  # fmt: skip
        return _checkpoint_from(obj, str(path))
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(obj)
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), dict):
            return Checkpoint(obj[key])
    raise ModelLoadError(f"{path} has no state dict (keys: {', '.join(map(str, list(obj)[:8]))})")


def _checkpoint_from(obj: dict[str, Any], source: str) -> Checkpoint:
    state, kinds, quant = obj.get("state_dict"), obj.get("modules") or {}, obj.get("quant") or {}
    ok = (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
          and isinstance(kinds, dict) and all(isinstance(v, dict) for v in kinds.values()) and isinstance(quant, dict)
          and all(isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(t, torch.Tensor) for t in v)
                  for v in quant.values()))  # fmt: skip
    if not ok:
        raise ModelLoadError(f"{source}: malformed deepslim checkpoint; re-save the model with deepslim.save_model")
    records = check_records(obj, source=source)
    points = None
    if obj.get("points") is not None:
        points = needed_layer_states(source).check_points_record(obj["points"], source)
    quant = {k: (v[0], v[1]) for k, v in quant.items()}
    assert isinstance(state, dict)  # checked above (``ok``)
    return Checkpoint(state, records, kinds, quant, bool(obj.get("resized")), points)


def restore_(model: nn.Module, ckpt: Checkpoint, *, source: str) -> nn.Module:
    """Give ``model`` the checkpoint's layers (resized, quantized, ...) and exactly its weights; returns it."""
    from deepslim.models._loading import load_state_into

    if ckpt.kinds or ckpt.resized:
        if not ckpt.resized:  # a wrong-sized file is an error, not a reason to resize
            _check_shapes(model, ckpt.state, source)
        try:
            shapes = {k: tuple(v.shape) for k, v in ckpt.state.items()}
            model = needed_layer_states(source).rebuild_layers(model, ckpt.kinds, shapes)
        except (ArchiveError, AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{source}: its layers cannot be rebuilt: {type(exc).__name__}: {exc}") from None
    load_state_into(model, ckpt.state, source=source)
    for name, (scale, zero) in ckpt.quant.items():
        try:
            layer: Any = model.get_submodule(name)  # a quantized layer
            layer.fixed_weight_params = (scale.view(-1), zero.view(-1))
        except AttributeError:
            raise ModelLoadError(f"{source}: quantized layer {name!r} is not in the model") from None
    set_records(model, ckpt.records, "input", "preprocessing")
    if ckpt.points is not None:
        needed_layer_states(source).restore_points(model, ckpt.points, source)
    return model


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
    if wrong:
        raise ModelLoadError(f"{source} does not match the architecture: tensors {len(wrong)} of a different shape "
                             f"(e.g. {wrong[0]})")  # fmt: skip


# -- torch.export programs -------------------------------------------------------------------------------------------


def _export(model: nn.Module, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """The program of ``model`` with a dynamic batch dimension (static only when the model cannot have one).

    ``Dim.AUTO`` specialises the batch to 1 when the example has batch 1, so the example is doubled and the
    dimension declared explicitly.
    """
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.ndim]
    wide = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1 else a
                 for a in args)  # fmt: skip
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.ndim else None for a in wide)
    with inference_mode(model):
        if tensors and len({a.shape[0] for a in wide if isinstance(a, torch.Tensor) and a.ndim}) == 1:
            try:
                return torch.export.export(model, wide, dynamic_shapes=dynamic)
            except Exception as exc:  # noqa: BLE001  (retried with a fixed batch below; the reason is logged)
                log.warning("the .pt2 program takes only batch size %d: torch.export cannot make the batch dynamic "
                            "(%s)", tensors[0].shape[0], str(exc).splitlines()[0])  # fmt: skip
        try:
            return torch.export.export(model, args)
        except Exception as exc:
            raise ModelLoadError(f"torch.export cannot capture the model: {str(exc).splitlines()[0]}") from exc


def save_program(model: nn.Module, dest: Path, example_input: Any = None) -> None:
    example = example_input if example_input is not None else recorded_example_input(model)
    if example is None:
        raise ConfigError("saving a .pt2 program needs example_input (the model records no input shape)")
    args = example if isinstance(example, tuple) else (example,)
    program = _export(model, args)
    records = {k: v for k, v in model_records(model, example).items() if k in _PROGRAM_RECORD_KEYS}
    with atomic_path(dest) as tmp:
        torch.export.save(program, tmp, extra_files={PROGRAM_RECORDS: json.dumps(records)})


def program_records(text: str, program: torch.export.ExportedProgram, source: str) -> dict[str, Any]:
    """The records stored beside a program (validated), with its input taken from the program when none was."""
    records: dict[str, Any] = {}
    if text:
        try:
            raw = json.loads(text) if len(text) <= _MAX_RECORD_BYTES else None
        except ValueError:
            raw = None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{source}: its {PROGRAM_RECORDS} member is not a deepslim record")
        records = check_records({k: raw.get(k) for k in _PROGRAM_RECORD_KEYS}, source=source)
    if "input" not in records:
        from deepslim.models._records import input_record

        example = getattr(program, "example_inputs", None)  # (args, kwargs)
        found = input_record(example[0]) if example else None
        if found is not None:
            records["input"] = found
    return records
