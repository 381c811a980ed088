"""Pairing a model with its data: the one place where the CLI and recipe runs load a model for a dataset and record
the dataset's preprocessing on it.

A zoo model is built to fit the data (input channels and size, classes); a file (checkpoint, ``.pt2`` program,
``.dsz`` archive) or a ``file.py:factory`` is loaded as it is. Loaders standardise inputs with the training set's
statistics, so a model trained or calibrated on them expects standardised inputs: :func:`attach_preprocessing`
records that on the model (checkpoints, archives and ONNX files written from it carry it), and the record it returns
is what a run directory writes beside its metrics (:func:`write_preprocessing`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from deepslim._io import atomic_path
from deepslim.errors import ConfigError
from deepslim.models import attach_preprocessing, preprocessing_record  # noqa: F401  (the pipeline's names)

log = logging.getLogger(__name__)

PREPROCESSING_FILE = "preprocessing.json"


def is_zoo_name(spec: str) -> bool:
    """Whether ``spec`` names a zoo architecture (and not a file of that name, which load_model would read)."""
    from deepslim.models import list_models

    return spec in list_models() and not Path(spec).exists()


def _is_factory(spec: str) -> bool:
    path, sep, _ = spec.rpartition(":")
    return bool(sep) and path.endswith(".py")


def load_for_data(spec: str | os.PathLike[str], data: Any = None, *, weights: str | None = None,
                  arch: str | None = None, options: dict[str, Any] | None = None) -> nn.Module:  # fmt: skip
    """Load model ``spec`` for ``data`` (a DataBundle, or None): a zoo architecture, named by ``spec`` or by ``arch``
    for a state-dict file, is sized for the data; ``options`` (the user's) win over what the data implies.

    The data's preprocessing is attached to the model (:func:`attach_preprocessing`).
    """
    from deepslim.models import load_model, options_for_data

    text = os.fspath(spec)
    options = dict(options or {})
    if arch is not None and (is_zoo_name(text) or _is_factory(text)):
        raise ConfigError(f"--arch names the architecture of a weights file, but {text!r} is already an architecture: "
                          "drop --arch (and load trained weights with --weights FILE)")  # fmt: skip
    sized = text if is_zoo_name(text) else arch if arch is not None and is_zoo_name(arch) else None
    if data is not None and sized is not None:
        options = options_for_data(sized, tuple(data.input_shape), data.num_classes, options)
    model = load_model(text, weights=weights, arch=arch, **options)
    if data is not None:
        attach_preprocessing(model, data)
    return model


def write_preprocessing(run_dir: str | os.PathLike[str], record: dict[str, Any] | None) -> Path | None:
    """Write ``preprocessing.json`` into a run directory (nothing when there is no preprocessing to record)."""
    if record is None:
        return None
    dest = Path(run_dir) / PREPROCESSING_FILE
    doc = {"format": "deepslim-preprocessing", "version": 1, "apply": "x = (raw - mean) / std along channel_dim",
           **record}  # fmt: skip
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return dest
