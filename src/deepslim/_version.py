"""The package version (a base-layer module: lower layers read it without importing the public API)."""

__version__ = "0.1.0"
