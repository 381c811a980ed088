"""Which items of a calibration batch are the model's inputs.

A batch is a tensor, ``(input, label)``, for a model with several inputs ``(input_ids, attention_mask)`` or
``(input_ids, attention_mask, labels)``, or a Hugging Face style dict (``{"input_ids": ..., "attention_mask": ...,
"labels": ...}``). A dict's entries become positional inputs in the order of the model's ``forward`` parameters
(entries it does not take are dropped, and so are the labels; a parameter the dict skips gets its default), because
quantization runs the model as ``model(*inputs)`` — tracing, calibration and the fidelity check alike. A model whose
``forward`` names none of the keys takes the dict as its one input. The tuple is ambiguous by itself, so the first
batch is tried on the model: all items, then all but the last (the label), then the first alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from deepslim._modes import inference_mode
from deepslim.errors import DataError

TARGET_KEYS = ("labels", "label")  # a dict batch's targets (the Hugging Face convention): never a model input
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def dict_inputs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The entries of ``batch`` as ``model``'s positional inputs, in the order of its ``forward`` parameters, up to
    the last one the dict holds (see the module docstring); None when ``forward`` names none of the keys."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind in _POSITIONAL]
    except (TypeError, ValueError):  # a forward without a readable signature (a C extension)
        return None
    taken = [i for i, p in enumerate(params) if p.name in batch and p.name not in TARGET_KEYS]
    if not taken:
        return None
    out = []
    for p in params[: taken[-1] + 1]:
        if p.name in batch and p.name not in TARGET_KEYS:
            out.append(batch[p.name])
        elif p.default is not inspect.Parameter.empty:
            out.append(p.default)
        else:
            raise DataError(f"the batch dict has no {p.name!r}, which {type(model).__name__}.forward takes before "
                            f"{params[taken[-1]].name!r}; add it to the batches (keys given: {', '.join(batch)})")
    return tuple(out)


def batch_inputs(model: nn.Module, batch: Any, inputs: int) -> tuple[Any, ...]:
    """The positional inputs of one batch: a dict's entries as :func:`dict_inputs` orders them, a tuple's first
    ``inputs`` items, or the batch itself."""
    if isinstance(batch, Mapping):
        mapped = dict_inputs(model, batch)
        return (batch,) if mapped is None else mapped
    if isinstance(batch, (tuple, list)):
        return tuple(batch[:inputs])
    return (batch,)


def model_inputs(model: nn.Module, batch: Any) -> tuple[Any, ...]:
    """The positional inputs of ``model`` in ``batch`` (see the module docstring); DataError when none run."""
    if isinstance(batch, Mapping):
        return batch_inputs(model, batch, 0)
    if not isinstance(batch, (tuple, list)):
        return (batch,)
    if len(batch) <= 1:
        return tuple(batch)
    counts = [len(batch), len(batch) - 1] + ([1] if len(batch) > 2 else [])
    failures = []
    for n in counts:
        try:
            with inference_mode(model), torch.no_grad():
                model(*batch[:n])
            return tuple(batch[:n])
        except Exception as exc:  # a wrong argument count raises TypeError, ValueError, shape errors...
            failures.append(f"{n} inputs: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]}")
    raise DataError(f"the model runs on none of the first calib_data batch's leading items ({'; '.join(failures)}); "
                    "pass batches as input, (input, label), (input_1, ..., input_n[, label]) or a dict of the "
                    "model's forward arguments")  # fmt: skip


def batch_target(batch: Any, inputs: int) -> torch.Tensor | None:
    """The target a batch carries beside its ``inputs`` model inputs: a dict's labels, a tuple's next item."""
    if isinstance(batch, Mapping):
        target = next((batch[k] for k in TARGET_KEYS if k in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) > inputs:
        target = batch[inputs]
    else:
        target = None
    return target if isinstance(target, torch.Tensor) else None
