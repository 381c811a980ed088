"""Turning a model spec into an ``nn.Module``, and saving one so it can be turned back.

A spec is a zoo name (``"resnet18"``), a Python factory (``"path/to/file.py:factory"``), a checkpoint written by
:func:`save_model` or a plain state dict (with ``arch=``), a ``torch.export`` program (``.pt2``), or a ``.dsz``
archive written by :func:`deepslim.encode`. Checkpoints are
read with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects.

A model built from a factory records it (``FACTORY_ATTR``: the spec as given, options, the file's sha256) and files
saved from it store that record; but reading a file never imports the code it names. The caller names the
architecture again (``arch="file.py:factory"``, CLI ``--arch``), and a changed source file is logged.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import import_file
from deepslim._memory import available_memory_bytes
from deepslim.errors import ConfigError, ModelLoadError, UnknownNameError
from deepslim.models._files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Checkpoint,
    not_a_file,
    program_records,
    read_checkpoint,
    restore_,
    save_program,
    write_checkpoint,
)
from deepslim.models._records import factory_record, remember_factory, set_records, sha256_of
from deepslim.models._registry import ARCH_ATTR, FACTORY_ATTR, create_model, list_models
from deepslim.models.formats import archive_format

log = logging.getLogger(__name__)
__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "build_architecture", "load_model", "load_state_into",
           "resize_like_", "save_model"]  # fmt: skip


def load_model(spec: str | os.PathLike[str] | nn.Module, *, weights: str | os.PathLike[str] | None = None,
               arch: str | None = None, **options: Any) -> nn.Module:  # fmt: skip
    """Build or load a model from ``spec``; ``options`` go to the zoo factory or the ``file.py:factory``.

    ``weights`` loads a checkpoint's weights (and its resized or quantized layers) into the built model. ``arch``
    is the architecture, a zoo name or ``file.py:factory``, of a checkpoint or archive that does not carry a zoo
    one: a plain state dict, or a file saved from a model built by a factory (deepslim never imports code that a
    file names, so the caller names it).
    """
    if isinstance(spec, nn.Module):
        return spec
    text = os.fspath(spec)
    if text.startswith("hf:"):  # a local Hugging Face directory (config.json + weights), never a hub download
        from deepslim.models.hf import load_hf

        if options:
            raise ConfigError(f"hf:PATH takes no model options, got {', '.join(sorted(options))}")
        model = load_hf(text.removeprefix("hf:"))
    elif is_factory_spec(text):
        model = _from_factory(text, options)
    elif text.endswith(".onnx"):
        raise ModelLoadError(
            f"{text}: an ONNX file cannot become a PyTorch module; deepslim can profile and benchmark it directly"
        )
    elif text.endswith(".pt2"):
        model = _from_exported(Path(text), options)
    elif text.endswith(".dsz"):
        model = _from_archive(Path(text), arch, options)
    elif Path(text).is_file():
        model = _from_checkpoint(Path(text), arch, options)
    elif Path(text).is_dir():
        raise ModelLoadError(f"{text!r} is a directory, not a model: name a zoo model, a model file in it, or a "
                             "Hugging Face directory as hf:PATH")  # fmt: skip
    elif os.sep in text or Path(text).suffix in (".pt", ".pth", ".ckpt", ".bin", ".py"):
        raise ModelLoadError(f"model file {text!r} does not exist")
    else:
        model = create_model(text, **options)
    if weights is not None:
        ckpt = read_checkpoint(Path(weights))
        model = restore_(model, ckpt, source=str(weights))
    return model


def save_model(model: nn.Module, path: str | os.PathLike[str], *, example_input: Any = None) -> Path:
    """Write ``model`` so that :func:`load_model` reads it back, atomically.

    - ``.dsz``: the compact archive (:func:`deepslim.encode`): exactly the weights the model runs with, and its
      quantized layers.
    - ``.pt``: a checkpoint with the weights and the architecture's record (zoo name or factory). Layers resized by
      structured pruning load back at their new size; quantized, clustered, masked and fp16 layers load back with
      exactly the same outputs.
    - ``.pt2``: a ``torch.export`` program, for any model whose layer tree changed (factorized layers, custom
      modules); it takes any batch size. ``example_input`` (else the input the model records) fixes the other
      dimensions.

    Every format records ``example_input``'s shape and the model's preprocessing when known.
    """
    dest = Path(path)
    if dest.suffix == ".dsz":
        from deepslim._io import atomic_path

        blob = archive_format(".dsz", str(dest)).write(model, example_input)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(blob)
    elif dest.suffix == ".pt2":
        save_program(model, dest, example_input)
    else:
        write_checkpoint(model, dest, example_input)
    return dest


def is_factory_spec(text: str) -> bool:
    """Whether ``text`` names a Python factory, ``path/to/file.py:name``."""
    path, sep, name = text.rpartition(":")
    return bool(sep and name and path.endswith(".py"))


def build_architecture(records: dict[str, Any], arch: str | None, options: dict[str, Any], *,
                       source: str) -> nn.Module:  # fmt: skip
    """A fresh model of the architecture a file records (checked ``records``), or of ``arch`` when given.

    A recorded factory is never imported from the record: without ``arch`` this is a ``ModelLoadError`` that says
    what to pass. Recorded options are the base that ``options`` override.
    """
    zoo, factory = records.get("arch"), records.get("factory")
    if arch is None:
        if factory:
            spec = factory["factory"]
            raise ModelLoadError(f"{source} holds a model built by {spec}, and deepslim never runs code that a file "
                                 f"names: pass the architecture with --arch {spec} (load_model(..., arch={spec!r}))")
        if not zoo:
            raise ModelLoadError(f"{source} records no architecture; pass arch=NAME (CLI: --arch NAME): a zoo name "
                                 f"(one of: {', '.join(list_models())}) or file.py:factory")  # fmt: skip
        name, base = zoo["name"], zoo["options"]
    elif is_factory_spec(arch):
        model = _from_factory(arch, {**(factory["options"] if factory else {}), **options})
        built = getattr(model, FACTORY_ATTR, None)
        current = built["sha256"] if built else sha256_of(Path(arch.rpartition(":")[0]))
        if factory and factory.get("sha256") and factory["sha256"] != current:
            log.warning("%s was saved from %s, whose source has changed since (sha256 %s..., now %s...); its "
                        "weights are loaded into the current code", source, factory["factory"],
                        factory["sha256"][:12], current[:12])  # fmt: skip
        return model
    else:
        name, base = arch, (zoo["options"] if zoo and zoo["name"] == arch else {})
    try:
        _check_fits(name, {**base, **options}, source)
        return create_model(name, **{**base, **options})
    except UnknownNameError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def _check_fits(name: str, options: dict[str, Any], source: str) -> None:
    """Refuse, before allocating, an architecture record whose options (a crafted ``num_classes``) ask for more memory
    than this process has: the model is built once on the meta device, which costs nothing, and measured."""
    with torch.device("meta"):
        probe = create_model(name, **options)
    need = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    free = available_memory_bytes()
    if free is not None and need > free // 2:
        raise ModelLoadError(f"{source}: its architecture record ({name} with {options}) needs "
                             f"{need / 2**30:.1f} GiB of weights, more than half the {free / 2**30:.1f} GiB free; "
                             "refusing before allocating it")  # fmt: skip


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


def _from_factory(spec: str, options: dict[str, Any]) -> nn.Module:
    """Import ``file.py`` and call its factory; the model records the spec (as given), options and file hash."""
    given, _, name = spec.rpartition(":")
    path = Path(given)
    if not path.is_file():
        raise not_a_file(path, "model file")
    mod_name = f"_deepslim_user_{abs(hash(path.resolve()))}"
    try:
        module = import_file(path, mod_name)
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if module is None:
        raise ModelLoadError(f"{path} cannot be imported as a Python module")
    factory = getattr(module, name, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelLoadError(f"{path} has no callable {name!r}; it defines: {', '.join(sorted(found)) or 'nothing'}")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{path}:{name} does not take these options: {exc}") from exc
    try:
        model = factory(**options)
    except Exception as exc:  # the user's code failed: theirs to fix, said in one line with the call
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"{path}:{name}({_call_args(options)}) raised {type(exc).__name__}"
                             f"{': ' + detail if detail else ''}; fix the factory or the options "
                             "(-O KEY=VALUE)") from exc  # fmt: skip
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{path}:{name} returned {type(model).__name__}, not a torch.nn.Module")
    model.__dict__.pop(ARCH_ATTR, None)  # the factory, not a zoo entry it may have started from, is the architecture
    record = factory_record(given, name, path, options)
    if record is not None:
        setattr(model, FACTORY_ATTR, record)
        remember_factory(record, factory)
    return model


def _call_args(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _from_archive(path: Path, arch: str | None, options: dict[str, Any]) -> nn.Module:
    if options and arch is None:
        raise ConfigError(f"a .dsz archive takes no model options (got {', '.join(options)}) unless arch= is given")
    if not path.is_file():
        raise not_a_file(path, "model file")
    return archive_format(path.suffix, str(path)).read(path.read_bytes(), arch, options, str(path))


def _from_exported(path: Path, options: dict[str, Any]) -> nn.Module:
    from deepslim.models._files import PROGRAM_RECORDS
    from deepslim.models._safe import verify_pt2

    if options:
        raise ConfigError(f"a .pt2 program takes no model options (got {', '.join(options)})")
    if not path.is_file():
        raise not_a_file(path, "model file")
    extra = {PROGRAM_RECORDS: ""}
    data = path.read_bytes()  # checked and loaded from the same bytes: a file swapped in between is never loaded
    verify_pt2(path, data)  # torch.export.load unpickles and execs parts of the file: refuse those that would run code
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable torch.export program: {exc}") from exc
    records = program_records(extra[PROGRAM_RECORDS], program, str(path))
    return set_records(program.module(), records, *records)


def _from_checkpoint(path: Path, arch: str | None, options: dict[str, Any]) -> nn.Module:
    ckpt: Checkpoint = read_checkpoint(path)
    model = build_architecture(ckpt.records, arch, options, source=str(path))
    return restore_(model, ckpt, source=str(path))
