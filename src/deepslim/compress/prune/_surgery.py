"""Layer surgery: small functions that keep only some channels of one layer, along one side.

Each takes the indices to keep (sorted, on the layer's device) and replaces the layer's tensors in place, so the module
object and its name stay the same and the result is a plain, smaller nn.Module.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models.transformer import SelfAttention


def _take(param: torch.Tensor | None, idx: torch.Tensor, dim: int) -> torch.Tensor | None:
    if param is None:
        return None
    new = param.data.index_select(dim, idx).clone()
    return nn.Parameter(new, requires_grad=param.requires_grad) if isinstance(param, nn.Parameter) else new


def keep_outputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a convolution, linear layer or embedding (its columns)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        m.weight, m.bias = _take(m.weight, idx, 0), _take(m.bias, idx, 0)
        m.out_channels = len(idx)
    elif isinstance(m, nn.Linear):
        m.weight, m.bias = _take(m.weight, idx, 0), _take(m.bias, idx, 0)
        m.out_features = len(idx)
    elif isinstance(m, nn.Embedding):
        m.weight = _take(m.weight, idx, 1)
        m.embedding_dim = len(idx)
    else:
        raise TypeError(f"cannot remove output channels of {type(m).__name__}")


def keep_inputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep input channels (features) ``idx`` of a convolution (groups=1) or linear layer."""
    m.weight = _take(m.weight, idx, 1)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        m.in_channels = len(idx)
    else:
        m.in_features = len(idx)


def keep_depthwise(m: nn.Conv2d | nn.Conv1d, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a depthwise convolution (one filter per channel)."""
    m.weight, m.bias = _take(m.weight, idx, 0), _take(m.bias, idx, 0)
    m.in_channels = m.out_channels = m.groups = len(idx)


def keep_norm(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a batch norm or a (1-D) layer norm."""
    m.weight, m.bias = _take(m.weight, idx, 0), _take(m.bias, idx, 0)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is not None:
            m.running_mean, m.running_var = _take(m.running_mean, idx, 0), _take(m.running_var, idx, 0)
        m.num_features = len(idx)
    else:
        m.normalized_shape = (len(idx),)


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
