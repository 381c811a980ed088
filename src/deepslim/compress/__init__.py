"""Compression techniques: one sub-package per family; the built-in ones are registered in ``techniques``."""

from deepslim.compress import techniques as techniques  # noqa: F401  (registers the built-in techniques)
