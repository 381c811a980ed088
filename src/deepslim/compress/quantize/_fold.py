"""Folding batch norm into the preceding convolution (what integer runtimes and exporters do)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from deepslim.errors import UnsupportedModelError


def fold_batchnorm_(model: nn.Module) -> list[str]:
    """Fold every BatchNorm2d that directly and solely follows a Conv2d into it; returns the folded BN names.

    Uses the running statistics (inference semantics). The BN becomes ``nn.Identity``; the convolution gains a bias.
    """
    from deepslim.compress.quantize._points import _Tracer  # quantized layers and points stay whole

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} to find conv→batch-norm pairs "
                                    f"({str(exc).splitlines()[0]}); quantize without folding: "
                                    "LinearQuantConfig(fold_batchnorm=False) (the export folds them instead)"
                                    ) from exc  # fmt: skip
    modules = dict(model.named_modules())
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if not isinstance(conv, nn.Conv2d) or bn.running_mean is None:
            continue
        _fold(conv, bn)
        parent, _, attr = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
        folded.append(node.target)
    return folded


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
        factor = gamma * inv_std  # (C_out,)
        conv.weight.mul_(factor.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
