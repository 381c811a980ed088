"""The dataset registry. A spec is ``name`` or ``name:path`` (``mnist:/data/mnist``, ``npz:arrays.npz``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from deepslim.data._bundle import DataBundle
from deepslim.errors import ConfigError, UnknownNameError

_LOADERS: dict[str, Callable[..., DataBundle]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    def wrap(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _LOADERS[name] = fn
        return fn

    return wrap


def loader_default(spec: str, option: str) -> Any:
    """The default value of a loader's keyword ``option`` for a dataset spec (None when the loader has no such
    option, or the spec names no registered loader): e.g. the training batch size a data-parallel run splits."""
    loader = _LOADERS.get(str(spec).partition(":")[0]) or (_LOADERS.get("npz") if str(spec).endswith(".npz") else None)
    param = inspect.signature(loader).parameters.get(option) if loader is not None else None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_data(spec: str | os.PathLike[str], **options: Any) -> DataBundle:
    """Load a dataset by spec: ``digits``, ``shapes``, ``fashion-mnist``, ``mnist-5k``, ``mnist1d``, or
    ``mnist|fashion-mnist|cifar10|folder|npz:PATH``. Loaders whose files have a default place (an installed package)
    take an optional path."""
    text = os.fspath(spec)
    name, sep, path = text.partition(":")
    if name not in _LOADERS:
        if text.endswith(".npz"):
            name, path, sep = "npz", text, ":"
        else:
            raise UnknownNameError("dataset", name, _LOADERS)
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    root = params.get("root")
    if sep and root is None:
        raise ConfigError(f"dataset {name!r} is built in and takes no path")
    if root is not None and root.default is inspect.Parameter.empty and not sep and "root" not in options:
        raise ConfigError(f"dataset {name!r} reads local files: give a path as '{name}:PATH'")
    if sep and "root" in options:
        raise ConfigError(f"dataset {name!r}: give the path once, in the spec or as root=, not both")
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = sorted(set(params) - {"root"})
        raise ConfigError(f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(accepted)}")  # fmt: skip
    return loader(root=path, **options) if sep else loader(**options)
