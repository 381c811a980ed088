"""What the ``.dsz`` archive stores of a model: its inference state (the tensors the forward pass uses, a quantized
weight as its integer codes) and the modules whose kind differs from the plain architecture. Also read by
:mod:`deepslim.compress.coding.state` for checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim.errors import ArchiveError


@dataclass
class _Tensor:
    name: str
    value: torch.Tensor  # what the forward pass uses
    # linear quantization: (codes, scale, zero point, channel axis, bits)
    linear: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None, int] | None = None
    # a dynamic int8 weight's entries computed in fp32 ("columns", "rows"; see _dynamic.fp32_channels): its value is
    # the float weight, its codes those of the int8 product
    fp32: dict[str, torch.Tensor] | None = None


def _module_kinds(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Modules whose kind differs from the plain architecture: quantized layers, fp16 layers, folded batch norms."""
    from deepslim.compress.quantize import dynamic_state
    from deepslim.compress.quantize.linear import QuantMixin

    kinds: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):  # a dynamic int8 layer adds its fp32 and scaled channels
            kinds[name] = {"kind": "quant", "bits": m.bits, "act_bits": m.act_bits, "per_channel": m.per_channel,
                           "symmetric": m.symmetric, **dynamic_state(m)}  # fmt: skip
        elif isinstance(m, nn.Identity):
            kinds[name] = {"kind": "identity"}
        elif getattr(m, "deepslim_half", None):
            kinds[name] = {"kind": "half", "dtype": m.deepslim_half}
    return kinds


def _inference_tensors(model: nn.Module) -> list[_Tensor]:
    from deepslim.compress.quantize import fp32_channels
    from deepslim.compress.quantize.linear import QuantMixin

    out = []
    for name, m in model.named_modules():
        if isinstance(m, parametrize.ParametrizationList) or ".parametrizations." in f".{name}.":
            continue  # a parametrization's own tensors (originals, masks, indices) are represented by the result
        prefix = f"{name}." if name else ""
        params = dict(m.named_parameters(recurse=False))
        if parametrize.is_parametrized(m):
            params.update(_parametrized_tensors(m, name))
        for key, t in sorted(params.items()):  # one order whether or not a tensor is parametrized
            if isinstance(m, QuantMixin) and key == "weight_scale":
                continue  # folded into the weight's codes
            item = _Tensor(prefix + key, t.detach())
            if isinstance(m, QuantMixin) and key == "weight" and not m.dynamic:
                codes, scale, zero, axis = m.weight_codes()
                item.linear = (codes, scale, zero, axis, m.bits)
                item.value = _dequantize(codes, scale, zero, axis)
            elif isinstance(m, QuantMixin) and key == "weight" and t.dtype == torch.float32:  # dynamic int8
                item.linear = (*m.weight_codes(), m.bits)
                item.fp32 = fp32_channels(m)  # the value stays the float weight: .pt checkpoints keep it
            out.append(item)
        for key, t in m.named_buffers(recurse=False):
            if key not in m._non_persistent_buffers_set:
                out.append(_Tensor(prefix + key, t.detach()))
    return out


def _parametrized_tensors(m: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors that stand for ``m``'s parametrized ones: the computed tensor for deepslim's encodings (masks,
    codebooks, codes), the originals for another library's parametrization (weight_norm, spectral_norm), so that the
    archive's names are the architecture's; ArchiveError when both act on one tensor."""
    out = {}
    plists: Any = m.parametrizations  # a ModuleDict of ParametrizationLists (torch types it as Tensor | Module)
    for key, plist in plists.items():
        ours = [type(p).__name__ for p in plist if type(p).__module__.startswith("deepslim.")]
        foreign = [type(p).__name__ for p in plist if not type(p).__module__.startswith("deepslim.")]
        if not foreign:
            out[key] = getattr(m, key)
        elif not ours:
            out.update({f"parametrizations.{key}.{n}": t for n, t in plist.named_parameters(recurse=False)})
        else:
            raise ArchiveError(f"layer {name or type(m).__name__}: its {key} is computed by {', '.join(foreign)} "
                               f"and then deepslim's {', '.join(ours)}; the archive stores one or the other: remove "
                               f"the {foreign[0]} before compressing (torch.nn.utils.parametrize."
                               f"remove_parametrizations(layer, {key!r}))")  # fmt: skip
    return out


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``(codes − zero) · scale`` in float32, exactly as the fake-quantized forward computes it."""
    q = codes.float()
    if axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.view(shape), zero.view(shape)
    return (q - zero) * scale
