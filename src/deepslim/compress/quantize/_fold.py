"""Folding batch norm into the preceding convolution (what integer runtimes and exporters do).

The conv→batch-norm pairs come from a graph capture: ``torch.fx`` at module level first, then ``torch.export``
(non-strict) whose ATen nodes map back to modules through the parameters they read (the capture channel pruning
uses), so models fx cannot trace (Hugging Face ones) fold too. A model without batch norm needs no capture at all.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from deepslim.errors import UnsupportedModelError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm_(model: nn.Module, example: tuple[Any, ...] | None = None) -> list[str]:
    """Fold every batch norm that directly and solely follows a convolution into it; returns the folded BN names.

    Uses the running statistics (inference semantics). The BN becomes ``nn.Identity``; the convolution gains a bias.
    ``example`` (the model's positional inputs) lets models that ``torch.fx`` cannot trace be captured with
    ``torch.export`` instead.
    """
    if not any(isinstance(m, _BNS) and m.running_mean is not None for m in model.modules()):
        return []
    pairs = _pairs(model, example)
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        assert isinstance(bn, _BNS)
        _fold(conv, bn)
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
        folded.append(bn_name)
    return folded


def _pairs(model: nn.Module, example: tuple[Any, ...] | None) -> list[tuple[str, str]]:
    """(convolution, batch norm) names of the foldable pairs, from fx or, failing that, torch.export."""
    from deepslim.compress.quantize._points import _Tracer  # quantized layers and points stay whole

    try:
        return _fx_pairs(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises many types on untraceable code
        fx_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if example is None:
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} with torch.fx to find conv→batch-norm pairs "
                                    f"({fx_error}); pass calib_data (its first batch lets torch.export capture the "
                                    "model) or quantize without folding: LinearQuantConfig(fold_batchnorm=False) "
                                    "(the export folds them instead)")  # fmt: skip
    try:
        from deepslim._modes import inference_mode

        with inference_mode(model), torch.no_grad():
            program = torch.export.export(model, tuple(example), strict=False)
    except Exception as exc:  # torch.export raises many types
        export_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UnsupportedModelError(f"cannot capture {type(model).__name__} to find conv→batch-norm pairs (torch.fx: "
                                    f"{fx_error}; torch.export: {export_error}); quantize without folding: "
                                    "LinearQuantConfig(fold_batchnorm=False) (the export folds them instead)"
                                    ) from exc  # fmt: skip
    return _export_pairs(model, program)


def _fx_pairs(model: nn.Module, graph: fx.Graph) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BNS) or bn.running_mean is None:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        if _foldable(modules[src.target], bn):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _export_pairs(model: nn.Module, program: torch.export.ExportedProgram) -> list[tuple[str, str]]:
    """Pairs in an ATen graph: a batch-norm node reading BN ``b``'s parameters whose input is a convolution node
    reading conv ``c``'s weight, used by nothing else, and each module called exactly once."""
    from deepslim.compress._capture import aten_name, owner_of

    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    found: list[tuple[fx.Node, str, str]] = []
    for node in program.graph.nodes:
        owners = _owners(node, names, owner_of)
        for owner in owners:
            calls[owner] = calls.get(owner, 0) + 1
        op = aten_name(node.target) if node.op == "call_function" else None
        if op is None or "batch_norm" not in op or len(owners) != 1 or not node.args:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_function" and aten_name(src.target) in
                ("conv1d", "conv2d", "conv3d", "convolution") and len(src.users) == 1):  # fmt: skip
            continue
        conv_owners = _owners(src, names, owner_of)
        if len(conv_owners) == 1:
            found.append((node, next(iter(conv_owners)), next(iter(owners))))
    pairs = []
    for _, conv_name, bn_name in found:
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if calls.get(conv_name) == 1 and calls.get(bn_name) == 1 and _foldable(conv, bn):
            pairs.append((conv_name, bn_name))
    return pairs


def _owners(node: fx.Node, names: dict[str, str], owner_of: Any) -> set[str]:
    """The modules whose parameters or buffers ``node`` reads."""
    return {owner_of(names[a.name]) for a in node.all_input_nodes if a.op == "placeholder" and a.name in names}


def _foldable(conv: Any, bn: Any) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(bn, _BNS) and bn.running_mean is not None
            and conv.weight.shape[0] == bn.running_mean.shape[0] and not hasattr(conv, "parametrizations"))  # fmt: skip


def _fold(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    assert isinstance(conv, _CONVS) and bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
        factor = gamma * inv_std  # (C_out,)
        conv.weight.mul_(factor.view(-1, *[1] * (conv.weight.ndim - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
