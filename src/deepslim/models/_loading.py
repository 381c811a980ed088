"""Turning a model spec into an ``nn.Module``, and saving one so it can be turned back.

A spec is a zoo name (``"resnet18"``), a Python factory (``"path/to/file.py:factory"``), a checkpoint written by
:func:`save_model` or a plain state dict (with ``arch=``), a ``torch.export`` program (``.pt2``), or a ``.dsz``
archive written by :func:`deepslim.encode`. Checkpoints are
read with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim._modes import inference_mode
from deepslim.errors import ConfigError, ModelLoadError, UnknownNameError
from deepslim.models._registry import ARCH_ATTR, create_model, list_models

CHECKPOINT_FORMAT = "deepslim-checkpoint"
CHECKPOINT_VERSION = 1
_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def load_model(spec: str | os.PathLike[str] | nn.Module, *, weights: str | os.PathLike[str] | None = None,
               arch: str | None = None, **options: Any) -> nn.Module:  # fmt: skip
    """Build or load a model from ``spec``; ``options`` go to the zoo factory or the ``file.py:factory``.

    ``weights`` loads a state dict into the built model. ``arch`` names the zoo architecture of a plain
    state-dict file (checkpoints written by :func:`save_model` carry their architecture).
    """
    if isinstance(spec, nn.Module):
        return spec
    text = os.fspath(spec)
    factory_path, sep, factory_name = text.rpartition(":")
    if sep and factory_path.endswith(".py"):
        model = _from_factory(Path(factory_path), factory_name, options)
    elif text.endswith(".onnx"):
        raise ModelLoadError(
            f"{text}: an ONNX file cannot become a PyTorch module; deepslim can profile and benchmark it directly"
        )
    elif text.endswith(".pt2"):
        model = _from_exported(Path(text), options)
    elif text.endswith(".dsz"):
        model = _from_archive(Path(text), options)
    elif Path(text).is_file():
        model = _from_checkpoint(Path(text), arch, options)
    elif os.sep in text or Path(text).suffix in (".pt", ".pth", ".ckpt", ".bin", ".py"):
        raise ModelLoadError(f"model file {text!r} does not exist")
    else:
        model = create_model(text, **options)
    if weights is not None:
        load_state_into(model, _read_state(Path(weights))[0], source=str(weights))
    return model


def save_model(model: nn.Module, path: str | os.PathLike[str], *, example_input: Any = None) -> Path:
    """Write ``model`` so that :func:`load_model` reads it back, atomically.

    A ``.dsz`` path writes the compact archive (:func:`deepslim.encode`): exactly the weights the model runs with,
    and its quantized layers, for zoo architectures.
    A ``.pt`` checkpoint holds the weights and the zoo architecture; a model whose layers were resized (structured
    pruning) records that, and loads back at its new size. A model whose layer tree changed (factorized layers,
    custom modules) is saved as a ``torch.export`` program: give a ``.pt2`` path and ``example_input``.
    """
    dest = Path(path)
    if dest.suffix == ".dsz":
        from deepslim.compress.coding import encode

        blob = encode(model)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(blob)
        return dest
    if dest.suffix == ".pt2":
        if example_input is None:
            raise ConfigError("saving a .pt2 program needs example_input")
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        batch_free = tuple({0: torch.export.Dim.AUTO} for _ in args)  # the program takes any batch size
        try:
            with inference_mode(model):
                program = torch.export.export(model, args, dynamic_shapes=batch_free)
        except Exception as exc:
            raise ModelLoadError(f"torch.export cannot capture the model: {str(exc).splitlines()[0]}") from exc
        with atomic_path(dest) as tmp:
            torch.export.save(program, tmp)
        return dest
    arch = getattr(model, ARCH_ATTR, None)
    state = model.state_dict()
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch, "state_dict": state,
               "resized": arch is not None and _check_structure(arch, state)}  # fmt: skip
    with atomic_path(dest) as tmp:
        torch.save(payload, tmp)
    return dest


def _check_structure(arch: dict[str, Any], state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has the architecture's tensors at other sizes; an error if its tensors differ."""
    with torch.device("meta"):
        fresh = create_model(arch["name"], **arch.get("options", {})).state_dict()
    if fresh.keys() != state.keys():
        extra = sorted(set(state) ^ set(fresh))[:3]
        raise ConfigError(f"the model's layers no longer match its architecture {arch['name']!r} (e.g. "
                          f"{', '.join(extra)}): save it as a .pt2 program (a .pt2 path, with example_input)")
    return any(tuple(fresh[k].shape) != tuple(v.shape) for k, v in state.items())


def resize_like_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every layer the sizes its tensors have in ``state`` (the inverse of structured pruning's surgery)."""
    from deepslim.models.transformer import SelfAttention

    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        tensors = [(k, t) for k, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))]
        for key, t in tensors:
            new = state.get(prefix + key)
            if new is None or new.shape == t.shape:
                continue
            fresh = torch.empty(new.shape, dtype=t.dtype, device=t.device)
            setattr(m, key, nn.Parameter(fresh, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter)
                    else fresh)  # fmt: skip
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            m.out_channels = m.weight.shape[0]
            if depthwise:
                m.in_channels = m.groups = m.out_channels
            else:
                m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = (m.weight.shape[0],)
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.num_heads = m.proj.in_features // m.head_dim


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` strictly, turning key and shape mismatches into one readable ``ModelLoadError``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of a different shape (e.g. {wrong[0]})")
    if problems:
        raise ModelLoadError(f"{source} does not match the architecture: tensors {'; '.join(problems)}")
    model.load_state_dict(state)


def _from_factory(path: Path, name: str, options: dict[str, Any]) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    mod_name = f"_deepslim_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelLoadError(f"{path} has no callable {name!r}; it defines: {', '.join(sorted(found)) or 'nothing'}")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{path}:{name} does not take these options: {exc}") from exc
    model = factory(**options)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{path}:{name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _from_archive(path: Path, options: dict[str, Any]) -> nn.Module:
    from deepslim.compress.coding import decode

    if options:
        raise ConfigError(f"a .dsz archive takes no model options (got {', '.join(options)})")
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    return decode(path.read_bytes())


def _from_exported(path: Path, options: dict[str, Any]) -> nn.Module:
    if options:
        raise ConfigError(f"a .pt2 program takes no model options (got {', '.join(options)})")
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    from deepslim.models._safe import verify_pt2

    verify_pt2(path)  # torch.export.load unpickles and execs parts of the file: refuse those that would run code
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable torch.export program: {exc}") from exc
    return program.module()


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, architecture or None) from a checkpoint file, refusing anything but tensors and containers.

    The architecture carries ``resized: True`` when the checkpoint's layers were resized by structured pruning.
    """
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" in detail:
            raise ModelLoadError(
                f"{path} holds Python objects other than tensors ({detail.split(':')[1].split(' was')[0].strip()}); "
                "deepslim only loads weights (weights_only=True). Save model.state_dict() or use deepslim.save_model"
            ) from exc
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint that loads with weights_only=True "
                             f"({detail})") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    if obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise ModelLoadError(f"{path}: checkpoint version {obj.get('version')} is not supported")
        arch = obj.get("arch")
        return obj["state_dict"], ({**arch, "resized": bool(obj.get("resized"))} if arch else None)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key], None
    raise ModelLoadError(f"{path} has no state dict (keys: {', '.join(map(str, list(obj)[:8]))})")


def _from_checkpoint(path: Path, arch: str | None, options: dict[str, Any]) -> nn.Module:
    state, stored = _read_state(path)
    resized = False
    if arch is not None:
        name, arch_options = arch, {}
    elif stored is not None:
        resized = stored.get("resized", False)
        name, arch_options = stored["name"], dict(stored.get("options", {}))
    else:
        raise ModelLoadError(
            f"{path} is a plain state dict with no architecture; pass arch=NAME (CLI: --arch NAME), "
            f"one of: {', '.join(list_models())}"
        )
    try:
        model = create_model(name, **{**arch_options, **options})
    except UnknownNameError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    if resized:
        resize_like_(model, state)
    load_state_into(model, state, source=str(path))
    return model
