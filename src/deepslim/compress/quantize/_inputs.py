"""Which items of a calibration batch are the model's inputs.

A batch is a tensor, ``(input, label)``, or for a model with several inputs ``(input_ids, attention_mask)`` or
``(input_ids, attention_mask, labels)``. The tuple is ambiguous by itself, so the first batch is tried on the model:
all items, then all but the last (the label), then the first alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepslim._modes import inference_mode
from deepslim.errors import DataError


def model_inputs(model: nn.Module, batch: Any) -> tuple[Any, ...]:
    """The positional inputs of ``model`` in ``batch`` (see the module docstring); DataError when none run."""
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
                    "pass batches as input, (input, label) or (input_1, ..., input_n[, label])")
