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


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_data(spec: str | os.PathLike[str], **options: Any) -> DataBundle:
    """Load a dataset by spec: ``digits``, ``shapes``, or ``mnist|fashion_mnist|cifar10|folder|npz:PATH``."""
    text = os.fspath(spec)
    name, sep, path = text.partition(":")
    if name not in _LOADERS:
        if text.endswith(".npz"):
            name, path, sep = "npz", text, ":"
        else:
            raise UnknownNameError("dataset", name, _LOADERS)
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    needs_root = "root" in params
    if needs_root and not sep:
        raise ConfigError(f"dataset {name!r} reads local files: give a path as '{name}:PATH'")
    if sep and not needs_root:
        raise ConfigError(f"dataset {name!r} is built in and takes no path")
    accepted = {k for k in params if k != "root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(sorted(accepted))}")  # fmt: skip
    return loader(root=path, **options) if needs_root else loader(**options)
