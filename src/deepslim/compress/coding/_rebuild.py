"""Rebuilding a model's layers from what an archive (or a checkpoint) records of them: a fresh architecture resized
to the stored shapes, its layers turned into the recorded kinds (quantized, identity, half precision)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepslim.compress.coding._records import _Tensor
from deepslim.errors import ArchiveError, ConfigError


def _build(model: nn.Module, kinds: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """``model`` (a fresh architecture) resized to ``shapes`` and with its modules turned into the recorded kinds."""
    from deepslim.compress.quantize import Calibration, apply_half, set_dynamic_state
    from deepslim.compress.quantize.linear import QUANTIZABLE
    from deepslim.models import resize_like_

    for name, spec in kinds.items():
        if spec["kind"] == "identity":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    resize_like_(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    for name, spec in kinds.items():
        m = model.get_submodule(name)
        if spec["kind"] == "quant":
            if type(m) not in QUANTIZABLE:
                raise ArchiveError(f"module {name}: a {type(m).__name__} cannot hold linear quantization")
            m.__class__ = QUANTIZABLE[type(m)]
            quant: Any = m  # a QuantMixin layer now
            quant.init_quant(spec["bits"], spec["act_bits"], spec["per_channel"], spec["symmetric"], False)
            try:
                set_dynamic_state(quant, spec)
            except ValueError as exc:
                raise ArchiveError(f"module {name}: malformed dynamic int8 record: {exc}") from None
            if spec.get("dynamic"):
                setattr(model, "deepslim_calibration", Calibration.DYNAMIC)  # noqa: B010  (what the report reads)
        elif spec["kind"] == "half":
            apply_half(m, spec["dtype"])
    # folded convolutions gained a bias
    for key in shapes:
        owner, _, attr = key.rpartition(".")
        if attr == "bias":
            try:
                m = model.get_submodule(owner)
            except AttributeError:
                continue  # not a layer of the architecture: the caller's key comparison reports it
            if getattr(m, "bias", "absent") is None:
                m.bias = nn.Parameter(torch.empty(shapes[key]))
    return model


def _check_rebuildable(fresh: nn.Module, kinds: dict[str, Any], tensors: list[_Tensor], what: str) -> None:
    """That the architecture ``fresh`` (on the meta device), given ``kinds``, has exactly the model's tensors."""
    with torch.device("meta"):
        rebuilt = _build(fresh, kinds, {t.name: tuple(t.value.shape) for t in tensors})
    have, want = {t.name for t in tensors}, set(rebuilt.state_dict())
    if have != want:
        extra = sorted(have ^ want)[:3]
        raise ConfigError(f"the model's layers no longer match its architecture {what!r} (e.g. {', '.join(extra)}); "
                          "encode a model whose layer tree is its architecture's (prune, quantize and cluster keep "
                          "it; factorize does not), or save it as a .pt2 program")  # fmt: skip
