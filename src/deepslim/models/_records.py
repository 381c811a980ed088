"""What a model file records besides its weights, and how those records are checked when a file is read.

A model carries plain-data records as attributes (see ``_registry``): its zoo architecture, the ``file.py:factory``
it was built by, the example input it was saved with, and the preprocessing its inputs need. Checkpoints, ``.pt2``
programs and ``.dsz`` manifests store them; loading sets them back. Records from a file are untrusted: each is
validated here into plain data, and a factory record is only ever *named* in messages, never imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim.errors import ModelLoadError
from deepslim.models._registry import ARCH_ATTR, FACTORY_ATTR, INPUT_ATTR, INPUT_DTYPES, PREPROCESSING_ATTR

log = logging.getLogger(__name__)

# record key in a file -> the model attribute that holds it
RECORD_ATTRS = {"arch": ARCH_ATTR, "factory": FACTORY_ATTR, "input": INPUT_ATTR, "preprocessing": PREPROCESSING_ATTR}
_MAX_INPUT_DIMS = 8
_MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: an example input is made from the record, so it is bounded
_MAX_SPEC = 1024
_FACTORY_SPEC = re.compile(r".+\.py:[A-Za-z_][A-Za-z0-9_]*")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def factory_record(path_as_given: str, name: str, path: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a model built by ``path:name`` with ``options``; None when the options are not plain data."""
    try:
        plain = json.loads(json.dumps(options))
    except (TypeError, ValueError):
        log.warning("%s:%s was given options that are not plain data; files saved from the model will not record "
                    "its factory", path_as_given, name)  # fmt: skip
        return None
    return {"factory": f"{path_as_given}:{name}", "options": plain, "sha256": sha256_of(path)}


def input_record(example: Any) -> dict[str, Any] | None:
    """``{"shape", "dtype"}`` of an example input (its first tensor), or None when there is no tensor."""
    tensor = example
    if isinstance(example, (tuple, list)):
        tensor = next((t for t in example if isinstance(t, torch.Tensor)), None)
    if not isinstance(tensor, torch.Tensor):
        return None
    dtype = str(tensor.dtype).removeprefix("torch.")
    return {"shape": list(tensor.shape), "dtype": dtype} if dtype in INPUT_DTYPES else None


def model_records(model: nn.Module, example_input: Any = None) -> dict[str, Any]:
    """The records to store in a file written from ``model`` (only those it has); ``example_input`` wins."""
    records = {key: getattr(model, attr) for key, attr in RECORD_ATTRS.items() if getattr(model, attr, None)}
    given = input_record(example_input) if example_input is not None else None
    if given is not None:
        records["input"] = given
    return records


def check_records(records: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The records read from ``source``, each validated into plain data (absent ones left out)."""
    return {key: _CHECKS[key](records[key], source) for key in RECORD_ATTRS if records.get(key) is not None}


def set_records(model: nn.Module, records: dict[str, Any], *keys: str) -> nn.Module:
    """Set the (already checked) ``records`` named by ``keys`` on ``model``."""
    for key in keys:
        if records.get(key) is not None:
            setattr(model, RECORD_ATTRS[key], records[key])
    return model


# -- rebuilding a model's architecture in this process, to check what a file will need ------------------------------

_FACTORIES: dict[tuple[str, str], Callable[..., nn.Module]] = {}  # (factory spec, sha256) -> the imported callable


def remember_factory(record: dict[str, Any], factory: Callable[..., nn.Module]) -> None:
    _FACTORIES[(record["factory"], record["sha256"])] = factory


def fresh_architecture(model: nn.Module) -> nn.Module | None:
    """``model``'s architecture built anew on the meta device (no memory), or None when that is not possible.

    Zoo models rebuild from the registry; models from a ``file.py:factory`` call the factory this process already
    imported (it is never imported again from a record).
    """
    from deepslim.models._registry import create_model

    arch, factory = getattr(model, ARCH_ATTR, None), getattr(model, FACTORY_ATTR, None)
    with torch.device("meta"):
        if factory:
            build = _FACTORIES.get((factory["factory"], factory["sha256"]))
            if build is None:
                return None
            try:
                return build(**factory["options"])
            except Exception as exc:  # the user's code: anything may go wrong on the meta device
                log.debug("%s does not build on the meta device: %s", factory["factory"], exc)
                return None
        return create_model(arch["name"], **arch.get("options", {})) if arch else None


def _bad(source: str, what: str, value: Any) -> ModelLoadError:
    return ModelLoadError(f"{source}: malformed {what} record {str(value)[:80]!r}; re-save the model with deepslim")


def _plain(value: Any, source: str, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise _bad(source, what, value) from None


def _check_arch(value: Any, source: str) -> dict[str, Any]:
    if not (isinstance(value, dict) and isinstance(value.get("name"), str)
            and isinstance(value.get("options", {}), dict)):  # fmt: skip
        raise _bad(source, "architecture", value)
    return {"name": value["name"], "options": _plain(value.get("options", {}), source, "architecture")}


def _check_factory(value: Any, source: str) -> dict[str, Any]:
    spec = value.get("factory") if isinstance(value, dict) else None
    # the spec is only ever shown (in the message that asks for --arch): one printable line naming file.py:name
    named = isinstance(spec, str) and len(spec) <= _MAX_SPEC and spec.isprintable() and _FACTORY_SPEC.fullmatch(spec)
    if not (named and isinstance(value.get("options", {}), dict) and isinstance(value.get("sha256", ""), str)
            and len(value.get("sha256", "")) <= 64):  # fmt: skip
        raise _bad(source, "factory", value)
    return {"factory": value["factory"], "options": _plain(value.get("options", {}), source, "factory"),
            "sha256": value.get("sha256", "")}  # fmt: skip


def _check_input(value: Any, source: str) -> dict[str, Any]:
    shape = value.get("shape") if isinstance(value, dict) else None
    if not (isinstance(shape, list) and len(shape) <= _MAX_INPUT_DIMS and value.get("dtype") in INPUT_DTYPES
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 20 for d in shape)
            and math.prod(shape) <= _MAX_INPUT_ELEMENTS):  # fmt: skip
        raise _bad(source, "input", value)
    return {"shape": list(shape), "dtype": value["dtype"]}


def _check_preprocessing(value: Any, source: str) -> dict[str, Any]:
    from deepslim._preprocessing import Preprocessing
    from deepslim.errors import DataError

    try:
        return Preprocessing.from_dict(value).to_dict()
    except DataError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None


_CHECKS = {"arch": _check_arch, "factory": _check_factory, "input": _check_input,
           "preprocessing": _check_preprocessing}  # fmt: skip


def preprocessing_record(data: Any) -> dict[str, Any] | None:
    """The data's preprocessing as plain JSON data (None when its inputs are fed as stored)."""
    pre = getattr(data, "preprocessing", None)
    return pre.to_dict() if pre is not None else None


def attach_preprocessing(model: nn.Module, data: Any) -> dict[str, Any] | None:
    """Record on ``model`` the preprocessing of the data it is paired with, unless it already carries one; return
    the record the model now carries (None when neither has one).

    Files written from the model afterwards (checkpoint, ``.pt2``, ``.dsz``, ONNX metadata) carry it. A record
    the model already has is kept: it says what inputs the model was trained on, and training and evaluation
    convert the data's inputs to it (``deepslim.train``), so it stays true when other data is paired with the model.
    """
    own, record = getattr(model, PREPROCESSING_ATTR, None), preprocessing_record(data)
    if own is not None:
        if record is not None and _differs(own, record):
            log.info("the model keeps the input preprocessing it records (mean %s, std %s); the data %s (mean %s, "
                     "std %s) is converted to it", own.get("mean"), own.get("std"), getattr(data, "name", "?"),
                     record["mean"], record["std"])  # fmt: skip
        return own
    if record is not None:
        setattr(model, PREPROCESSING_ATTR, record)
    return record


def _differs(a: dict[str, Any], b: dict[str, Any], rel: float = 0.05) -> bool:
    try:
        pairs = [(a[k], b[k]) for k in ("mean", "std")]
        if a.get("channel_dim", 1) != b.get("channel_dim", 1) or any(len(x) != len(y) for x, y in pairs):
            return True
        return any(abs(u - v) > rel * max(abs(u), abs(v), 1e-3) for x, y in pairs for u, v in zip(x, y, strict=True))
    except (KeyError, TypeError, AttributeError):
        return True
