"""The model registry: a decorator registers a factory, ``list_models`` lists them by glob, and a test iterates it.

Each entry knows how to build the example input its model expects, so profiling, tracing and export work from a
name alone. Options are checked against the factory's signature, so a misspelled option is a one-line
``ConfigError`` naming the accepted ones instead of a ``TypeError`` from deep inside a constructor.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepslim.errors import ConfigError, UnknownNameError

# set by whoever pairs a model with its data (CLI, recipes): the data's Preprocessing.to_dict(), so files written
# from the model (checkpoint, .pt2, .dsz, ONNX metadata) record what inputs the model expects
PREPROCESSING_ATTR = "_deepslim_preprocessing"
ARCH_ATTR = "_deepslim_arch"  # set on every model built from the registry: {"name": ..., "options": {...}}
# set on every model built from a ``file.py:factory`` spec: {"factory": "file.py:name" (the path as given),
# "options": {...}, "sha256": hex digest of the file}. Files saved from the model record it; loading such a file
# never imports the factory by itself -- the caller names it again (arch=, CLI --arch).
FACTORY_ATTR = "_deepslim_factory"
# the example input a model was saved with, when known: {"shape": [...], "dtype": "float32"}
INPUT_ATTR = "_deepslim_input"
INPUT_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                          torch.int64, torch.int32, torch.uint8, torch.bool)}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    example: Callable[..., torch.Tensor]  # (batch_size, **resolved options) -> example input
    paper: str
    task: str  # "image" | "vector" | "text"

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.factory)
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """The factory's defaults overlaid with ``options``, after checking every option is accepted."""
        known = self.defaults()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(known)) or '(none)'}"
            )
        for key, value in options.items():
            _check_option(self.name, key, value, known[key])
        return {**known, **options}


def _check_option(model: str, key: str, value: Any, default: Any) -> None:
    """An option must have its default's kind (a count stays a positive integer): a string where a number belongs, or
    ``num_classes=-1``, is a ConfigError naming the option, not an error from deep inside the factory."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or default <= 0)
        what = "a positive integer" if default > 0 else "an integer"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    elif isinstance(default, (tuple, list)):
        ok, what = isinstance(value, (tuple, list)), "a list"
    else:
        return
    if not ok:
        raise ConfigError(f"model {model!r}: option {key} must be {what} (default {default!r}), got {value!r}")


_REGISTRY: dict[str, ModelEntry] = {}


def image_input(batch_size: int = 1, *, in_channels: int = 3, input_size: int = 224, **_: Any) -> torch.Tensor:
    return torch.randn(batch_size, in_channels, input_size, input_size)


def register_model(
    name: str | None = None,
    *,
    paper: str,
    task: str = "image",
    example: Callable[..., torch.Tensor] = image_input,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory`` under ``name`` (default: the function's name)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise RuntimeError(f"model {key!r} registered twice")
        _REGISTRY[key] = ModelEntry(key, factory, example, paper, task)
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, _REGISTRY) from None


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a registered architecture with fresh weights."""
    entry = get_model_entry(name)
    resolved = entry.resolve(options)
    try:
        model = entry.factory(**resolved)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model {name!r} cannot be built with {options}: {exc}") from exc
    setattr(model, ARCH_ATTR, {"name": name, "options": dict(options)})
    return model


def options_for_data(name: str, input_shape: tuple[int, ...], num_classes: int,
                     options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``options`` completed so that model ``name`` fits data of ``input_shape`` (no batch) and ``num_classes``.

    Options the user gave win; only options the factory accepts are filled in.
    """
    accepted = get_model_entry(name).defaults()
    filled = {"num_classes": num_classes}
    if len(input_shape) == 3:
        filled |= {"in_channels": input_shape[0], "input_size": input_shape[-1]}
        if input_shape[-1] <= 64 and "small_input" in accepted:
            filled["small_input"] = True
    if "in_features" in accepted and "in_channels" not in accepted:  # an MLP flattens whatever it is given
        filled["in_features"] = math.prod(input_shape)
    return {**{k: v for k, v in filled.items() if k in accepted}, **options}


def example_input(name: str, batch_size: int = 1, **options: Any) -> torch.Tensor:
    """An input of the shape and dtype the registered model ``name`` (built with ``options``) expects."""
    entry = get_model_entry(name)
    return entry.example(batch_size, **entry.resolve(options))


def input_of_shape(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """An input of ``shape`` for ``model`` (the CLI's ``--input-shape``): token ids where the model takes them (its
    own ``input_for_shape``, as an ``hf:`` BERT has, or a text zoo entry's vocabulary), else float normals."""
    make = getattr(model, "input_for_shape", None)
    if callable(make):
        return make(tuple(shape))
    arch = getattr(model, ARCH_ATTR, None)
    if arch is not None and get_model_entry(arch["name"]).task == "text":
        vocab = get_model_entry(arch["name"]).resolve(arch.get("options", {})).get("vocab_size", 2)
        return torch.randint(0, vocab, tuple(shape))
    return torch.randn(*shape)


def recorded_example_input(model: nn.Module, batch_size: int | None = None) -> torch.Tensor | None:
    """An input for ``model`` from what it records: the input shape a file stored, else its zoo entry; or None.

    ``batch_size`` replaces the recorded batch dimension when given.
    """
    record = getattr(model, INPUT_ATTR, None)
    if record:
        shape = list(record["shape"])
        if batch_size is not None and shape:
            shape[0] = batch_size
        dtype = INPUT_DTYPES[record.get("dtype", "float32")]
        return torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    arch = getattr(model, ARCH_ATTR, None)
    if arch:
        return example_input(arch["name"], 1 if batch_size is None else batch_size, **arch.get("options", {}))
    return None
