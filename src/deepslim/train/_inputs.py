"""Feeding a model the inputs it was trained on: when a model carries the preprocessing its training data went
through (``PREPROCESSING_ATTR``, set by whoever paired it with data) and the data at hand was preprocessed
differently, or not at all, each batch is converted: raw = data's ``invert(x)``, then the model's ``apply(raw)``.

Without this, a model trained on inputs standardised one way and fed inputs standardised another way (or raw
pixels) answers wrongly without any sign.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from deepslim.data import LOADER_PREPROCESSING_ATTR, DataBundle, Preprocessing
from deepslim.tasks import Inputs

_UNKNOWN = object()


def data_preprocessing(data: DataBundle | DataLoader | Any) -> Preprocessing | None | object:
    """The preprocessing ``data``'s inputs went through: a record, None (raw inputs), or ``_UNKNOWN``."""
    if isinstance(data, DataBundle):
        return data.preprocessing
    return getattr(data, LOADER_PREPROCESSING_ATTR, _UNKNOWN)


def model_preprocessing(model: nn.Module) -> Preprocessing | None:
    from deepslim.models import PREPROCESSING_ATTR

    record = getattr(model, PREPROCESSING_ATTR, None)
    return Preprocessing.from_dict(record) if isinstance(record, dict) else None


def input_adapter(model: nn.Module, data_pre: Preprocessing | None | object) -> Callable[[Inputs], Inputs]:
    """A function converting a batch's inputs from the data's preprocessing to the model's (identity if equal)."""
    model_pre = model_preprocessing(model)
    if model_pre is None or data_pre is _UNKNOWN or data_pre == model_pre:
        return _identity
    source = data_pre if isinstance(data_pre, Preprocessing) else None

    def convert(x: torch.Tensor) -> torch.Tensor:
        raw = source.invert(x) if source is not None else x
        return model_pre.apply(raw)

    def adapt(inputs: Inputs) -> Inputs:
        if isinstance(inputs, torch.Tensor):
            return convert(inputs)
        if isinstance(inputs, tuple) and inputs and inputs[0].is_floating_point():
            return (convert(inputs[0]), *inputs[1:])
        return inputs  # token ids and other non-tensor layouts are fed as they are

    return adapt


def _identity(inputs: Inputs) -> Inputs:
    return inputs
