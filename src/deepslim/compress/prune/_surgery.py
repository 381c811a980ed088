"""Layer surgery: small functions that keep only some channels of one layer, along one side.

Each takes the indices to keep (sorted, on the layer's device) and replaces the layer's tensors in place, so the module
object and its name stay the same and the result is a plain, smaller nn.Module.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models.adapters import LayerKind, layer_kind, weight_of
from deepslim.models.transformer import SelfAttention


def _take(param: torch.Tensor | None, idx: torch.Tensor, dim: int) -> torch.Tensor | None:
    if param is None:
        return None
    new = param.data.index_select(dim, idx).clone()
    return nn.Parameter(new, requires_grad=param.requires_grad) if isinstance(param, nn.Parameter) else new


def _count(m: nn.Module, attr: str | None, n: int) -> None:
    if attr is not None and hasattr(m, attr):
        setattr(m, attr, (n,) if isinstance(getattr(m, attr), tuple) else n)


def _kind(m: nn.Module) -> LayerKind:
    kind = layer_kind(m)
    if kind is None:
        raise TypeError(f"cannot remove channels of {type(m).__name__}: no layer kind describes it")
    return kind


def keep_outputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a convolution, linear-like layer or embedding (its columns)."""
    kind = _kind(m)
    setattr(m, "weight", _take(weight_of(m), idx, kind.out_dim))  # noqa: B010 (a Parameter replaces a Parameter)
    for name in kind.per_channel:
        if getattr(m, name, None) is not None:
            setattr(m, name, _take(getattr(m, name), idx, 0))
    _count(m, kind.out_attr, len(idx))


def keep_inputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep input channels (features) ``idx`` of a convolution (groups=1) or linear-like layer."""
    kind = _kind(m)
    if kind.in_dim is None:
        raise TypeError(f"{type(m).__name__} ({kind.name}) has no input channels to remove")
    setattr(m, "weight", _take(weight_of(m), idx, kind.in_dim))  # noqa: B010
    _count(m, kind.in_attr, len(idx))


def keep_depthwise(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a depthwise convolution (one filter per channel)."""
    keep_outputs(m, idx)
    setattr(m, "in_channels", len(idx))  # noqa: B010 (nn.Conv2d's int attributes)
    setattr(m, "groups", len(idx))  # noqa: B010


def keep_norm(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a per-channel norm (batch norm, 1-D layer norm, group norm of one channel per group)."""
    kind = _kind(m)
    for name in ("weight", *kind.per_channel):
        if getattr(m, name, None) is not None:
            setattr(m, name, _take(getattr(m, name), idx, 0))
    _count(m, kind.out_attr, len(idx))
    if isinstance(m, nn.GroupNorm):
        m.num_groups = len(idx)


def head_rows(keep_heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows (or columns) of the heads in ``keep_heads`` in a (heads × head_dim) projection."""
    return (keep_heads[:, None] * head_dim + torch.arange(head_dim, device=keep_heads.device)).flatten()


def keep_heads(m: SelfAttention, heads: torch.Tensor) -> None:
    """Keep attention heads ``heads``: rows of the q/k/v projections, columns of the output projection."""
    rows = head_rows(heads, m.head_dim)
    if hasattr(m, "qkv"):
        inner = m.num_heads * m.head_dim
        keep_outputs(m.qkv, torch.cat([rows + k * inner for k in range(3)]))
    else:
        for proj in (m.query, m.key, m.value):
            keep_outputs(proj, rows)
    keep_inputs(m.proj, rows)
    m.num_heads = len(heads)
