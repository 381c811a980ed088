"""A compressed model's state outside the archive's byte coding: what checkpoints and archives record of its layers,
and how loading rebuilds them.

- :func:`inference_state`: the weights the forward pass uses (a masked weight, a codebook lookup, dequantized codes),
  the layers whose kind differs from the plain architecture (quantized, folded batch norm, fp16), and each
  quantized layer's fixed weight scale and zero point. :func:`rebuild_layers` turns a fresh architecture into those
  kinds at those sizes. The ``.dsz`` archive codes the same state (:mod:`deepslim.compress.coding.archive`).
- Activation quantization points (:func:`deepslim.compress.quantize.insert_points_`): modules that linear quantization
  inserts into the forward (residual additions, concatenations, layer outputs), whose calibrated scale and zero
  point the outputs depend on. A file records each point's parameters; loading re-inserts the points into the
  rebuilt model -- the same placement, since it has the same quantized layers -- and gives them those values.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from deepslim.errors import ModelLoadError

_NAME = re.compile(r"p\d{1,6}")  # point names, as quantization gives them
_MAX_POINTS = 100_000
_POINTS_ATTR = "deepslim_points"  # where quantization keeps a model's points (compress.quantize's POINTS_ATTR)


def inference_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, list]]:
    """(state, layer kinds, {layer: [weight scale, zero point]}): what the forward pass of ``model`` uses."""
    from deepslim.compress.coding.archive import _inference_tensors, _module_kinds

    state, quant = {}, {}
    for item in _inference_tensors(model):
        state[item.name] = item.value.clone()
        if item.linear is not None:
            _, scale, zero, _, _ = item.linear
            quant[item.name.rpartition(".")[0]] = [scale.reshape(-1).clone(), zero.reshape(-1).clone()]
    return state, _module_kinds(model), quant


def layer_kinds(model: nn.Module) -> dict[str, Any]:
    """The layers of ``model`` whose kind differs from the plain architecture (as the archive records them)."""
    from deepslim.compress.coding.archive import _module_kinds

    return _module_kinds(model)


def rebuild_layers(model: nn.Module, kinds: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """``model``, a fresh architecture, resized to ``shapes`` and with its layers turned into ``kinds``."""
    from deepslim.compress.coding.archive import _build

    return _build(model, kinds, shapes)


def points_record(model: nn.Module) -> dict[str, Any] | None:
    """``{"method", "points": {name: {"scale", "zero", "enabled"}}}`` for a model with points, else None."""
    points = getattr(model, _POINTS_ATTR, None)
    if not points:
        return None
    method = next(iter(points.values())).method
    values = {name: {"scale": float(p.scale), "zero": int(p.zero), "enabled": bool(p.enabled)}
              for name, p in points.items()}  # fmt: skip
    return {"method": method.value, "points": values}


def check_points_record(record: Any, source: str) -> dict[str, Any]:
    """The record read from ``source``, validated (a ``ModelLoadError`` that names the file otherwise)."""
    from deepslim.compress.quantize.observers import Calibration

    points = record.get("points") if isinstance(record, dict) else None
    ok = (isinstance(points, dict) and 0 < len(points) <= _MAX_POINTS
          and record.get("method") in {c.value for c in Calibration} - {"auto", "dynamic"}  # static points only
          and all(isinstance(n, str) and _NAME.fullmatch(n) and isinstance(p, dict)
                  and isinstance(p.get("scale"), float) and p["scale"] > 0
                  and isinstance(p.get("zero"), int) and 0 <= p["zero"] <= 255 and isinstance(p.get("enabled"), bool)
                  for n, p in points.items()))  # fmt: skip
    if not ok:
        raise ModelLoadError(f"{source}: malformed quantization points record; re-save the model with deepslim")
    return record


def restore_points_(model: nn.Module, record: dict[str, Any], *, source: str) -> None:
    """Insert the recorded points into ``model`` (rebuilt, with its quantized layers) and set their parameters."""
    from deepslim.compress.quantize import insert_points_
    from deepslim.compress.quantize.observers import Calibration
    from deepslim.models import recorded_example_input

    example = recorded_example_input(model, 1)
    if example is None:
        raise ModelLoadError(f"{source} records activation quantization points but no input shape to place them "
                             "with: re-save the model with an example input")  # fmt: skip
    insert_points_(model, example, Calibration(record["method"]))
    points = getattr(model, _POINTS_ATTR, {})
    if set(points) != set(record["points"]):
        raise ModelLoadError(f"{source}: its {len(record['points'])} activation quantization points do not fit the "
                             f"rebuilt model ({len(points)} places found)")  # fmt: skip
    for name, p in points.items():
        saved = record["points"][name]
        with torch.no_grad():
            p.scale.fill_(saved["scale"])
            p.zero.fill_(saved["zero"])
        p.enabled = saved["enabled"]
