"""The exceptions deepslim raises.

Every error a user can cause is a :class:`DeepSlimError`; the CLI prints its message as one line and exits with
status 2. Messages say what is wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


class DeepSlimError(Exception):
    """Base class of every error caused by bad input (as opposed to a bug in deepslim)."""


class ConfigError(DeepSlimError, ValueError):
    """An option, config field or recipe entry has an invalid value."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (model, dataset, device) used a name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ModelLoadError(DeepSlimError):
    """A model file is missing, malformed, or does not match the architecture it claims."""


class DataError(DeepSlimError):
    """A dataset is missing, malformed, or inconsistent."""


class InputShapeError(DeepSlimError):
    """An example input does not fit the model."""


class UnsupportedModelError(DeepSlimError):
    """A model (or a layer in it) cannot be handled by the requested operation."""


class UnsupportedOpError(UnsupportedModelError):
    """An operator is not known to the profiler or to an export target."""


class ArchiveError(DeepSlimError):
    """A .dsz archive is truncated, corrupted, foreign or of an unsupported version."""


class ExportError(DeepSlimError):
    """A model could not be exported to, or run in, a target runtime."""


class QuantizationError(DeepSlimError):
    """A quantized model does not compute what the float model computes (its output check failed)."""
