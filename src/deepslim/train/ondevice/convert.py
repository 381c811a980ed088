"""Converting a model for memory-efficient on-device training: TinyTL and bias-only (Cai et al., NeurIPS 2020).

``efficient_`` swaps each covered layer for its memory-efficient subclass (same parameters and names); ``bias_only_``
freezes every weight and trains the biases; ``tinytl_`` does both, adds lite residual branches to the model's blocks
and trains the head. Layers the efficient modules do not cover keep training the stock way; they are named
(:func:`uncovered_layers`, and a warning) and a training profile counts what they keep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import cast

import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim.analysis import Example, as_call
from deepslim.analysis.training import rebatch
from deepslim.errors import ConfigError
from deepslim.train.ondevice.modules import (
    EFFICIENT_TYPES,
    BlockAvgPool2d,
    CompactMaxPool2d,
    FrozenBatchNorm2d,
    FrozenConv2d,
    FrozenLinear,
    LiteResidual,
    PackedDropout,
    PackedReLU,
    PackedReLU6,
    add_lite_residual,
)

log = logging.getLogger(__name__)

# stock layers that keep nothing for backward (or have nothing to train): no conversion needed
_NOTHING_KEPT = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Sequential, nn.ModuleList, nn.ModuleDict)
_DEFAULT_BLOCKS = ("InvertedResidual", "BasicBlock", "Bottleneck")


def _swap(module: nn.Module) -> bool:
    """Turn ``module`` into its efficient subclass in place (parameters, buffers and hooks stay); False if uncovered."""
    if type(module) is nn.Conv2d:
        module.__class__ = FrozenConv2d
    elif type(module) is nn.Linear:
        module.__class__ = FrozenLinear
    elif type(module) is nn.ReLU:
        module.__class__ = PackedReLU
    elif type(module) is nn.ReLU6:
        module.__class__ = PackedReLU6
    elif type(module) is nn.Dropout:
        module.__class__ = PackedDropout
    elif type(module) is nn.MaxPool2d and not module.return_indices:
        module.__class__ = CompactMaxPool2d
    elif type(module) is nn.BatchNorm2d and module.track_running_stats and module.affine:
        module.__class__ = FrozenBatchNorm2d
        cast(FrozenBatchNorm2d, module).refresh()
    else:
        return isinstance(module, EFFICIENT_TYPES)
    return True


def _global_pool(module: nn.Module) -> bool:
    size = getattr(module, "output_size", None)
    return type(module) is nn.AdaptiveAvgPool2d and size in (1, (1, 1))


def efficient_(model: nn.Module) -> nn.Module:
    """Swap every covered layer for its memory-efficient form, in place; return the model.

    Covered: Conv2d (zero padding), Linear, ReLU, ReLU6, BatchNorm2d with running statistics (then frozen to them),
    global average pooling, Dropout (mask as bits), MaxPool2d (the argmax's place in its window). The rest is named
    in a warning and trains the stock way.
    """
    for name, module in list(model.named_modules()):
        if _global_pool(module):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, BlockAvgPool2d(None))
        else:
            _swap(module)
    missing = uncovered_layers(model)
    if missing:
        log.warning("trained the stock way (they keep their inputs for backward): %s",
                    ", ".join(f"{n} ({t})" for n, t in missing.items()))  # fmt: skip
    return model


def uncovered_layers(model: nn.Module) -> dict[str, str]:
    """Leaf layers with no memory-efficient form here, by name → type; they keep what stock autograd keeps."""
    return {name: type(m).__name__ for name, m in model.named_modules()
            if name and not any(True for _ in m.children()) and not isinstance(m, (*EFFICIENT_TYPES, *_NOTHING_KEPT))
            and not isinstance(m, LiteResidual)}  # fmt: skip


def bias_only_(model: nn.Module, *, efficient: bool = True, train_last: bool = False) -> nn.Module:
    """Freeze every weight and train only the biases (and the last layer if ``train_last``); in place.

    With ``efficient=False`` the layers stay stock: the anchor that shows stock PyTorch keeping about as many
    activations for bias-only training as for full fine-tuning.
    """
    if efficient:
        efficient_(model)
    last = _last_layer(model) if train_last else None
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] == "bias" or (last is not None and name.startswith(last + ".")))
    return model


def _last_layer(model: nn.Module) -> str:
    layers = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not layers:
        raise ConfigError("the model has no parameters to train")
    return layers[-1]


def tinytl_(model: nn.Module, *, residual: bool = True, example_input: Example | None = None,
            blocks: Iterable[str] | Callable[[str, nn.Module], bool] | None = None, downsample: int = 2,
            expand: float = 1.0, groups: int = 2, pointwise_groups: int = 1,
            train_head: bool = True) -> nn.Module:  # fmt: skip
    """TinyTL in place: efficient layers, frozen weights, trainable biases, lite residual branches and the head.

    ``blocks`` names the modules that get a lite residual branch (default: every InvertedResidual, BasicBlock and
    Bottleneck); their input and output sizes come from one eval-mode forward on one sample of ``example_input``
    (required when ``residual``). A branch is sized by ``downsample``, ``expand``, ``groups`` (its 3×3 conv) and
    ``pointwise_groups`` (its 1×1 conv; see :class:`LiteResidual`). Return the model.
    """
    if downsample < 1 or groups < 1 or pointwise_groups < 1 or expand <= 0:
        raise ConfigError("downsample, groups and pointwise_groups must be at least 1 and expand positive")
    targets: dict[str, nn.Module] = {}
    if residual:
        if example_input is None:
            raise ConfigError("tinytl_ needs example_input to size the lite residual branches (or residual=False)")
        targets = _blocks(model, blocks)
        if not targets:
            raise ConfigError("no block to add a lite residual branch to; name them with blocks=[...]")
        done = [n for n, b in targets.items() if hasattr(b, "lite_residual")]
        if done:
            raise ConfigError(f"block {done[0]} has a lite residual branch already; convert a model only once")
        shapes = _block_shapes(model, targets, example_input)
    bias_only_(model, efficient=True, train_last=train_head)
    for name, block in targets.items():
        (cin, hin), (cout, hout) = shapes[name]
        stride = max(1, round(hin / max(hout, 1)))
        block.lite_residual = LiteResidual(cin, cout, stride, downsample=downsample, expand=expand, groups=groups,
                                           pointwise_groups=pointwise_groups)  # fmt: skip
        block.register_forward_hook(add_lite_residual)
    return model


def recalibrate_statistics_(model: nn.Module, inputs: Iterable[Example]) -> nn.Module:
    """Re-estimate every batch norm's running statistics on the target task's ``inputs`` (AdaBN: Li et al., 2016),
    in place; frozen batch norms are refolded. Return the model.

    A frozen batch norm normalizes with the source task's statistics; on a new task the features shift, and biases
    alone follow that slowly. Forward passes without gradients (no training memory) average each layer's batch
    statistics over ``inputs`` (a few batches of the new task; targets are not needed).
    """
    batches = list(inputs)
    if not batches:
        raise ConfigError("recalibrating batch-norm statistics needs at least one batch of inputs")
    norms: list[nn.modules.batchnorm._BatchNorm] = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kinds = {m: (type(m), m.momentum) for m in norms}
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # dropout off; only the norms collect statistics
        for norm in norms:
            if isinstance(norm, FrozenBatchNorm2d):
                norm.__class__ = nn.BatchNorm2d  # type: ignore[assignment]  # the stock layer accumulates statistics
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
            norm.train()
        with torch.no_grad():
            for batch in batches:
                args, kwargs = as_call(batch)
                model(*args, **kwargs)
    finally:
        for norm, (kind, momentum) in kinds.items():
            norm.__class__ = kind
            norm.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    for norm in norms:
        if isinstance(norm, FrozenBatchNorm2d):
            norm.refresh()
    return model


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks ``tinytl_`` gives a lite residual branch by default (InvertedResidual, BasicBlock,
    Bottleneck)."""
    return list(_blocks(model, None))


def _blocks(model: nn.Module, blocks: Iterable[str] | Callable[[str, nn.Module], bool] | None) -> dict[str, nn.Module]:
    if blocks is None:
        return {n: m for n, m in model.named_modules() if type(m).__name__ in _DEFAULT_BLOCKS}
    if callable(blocks):
        return {n: m for n, m in model.named_modules() if blocks(n, m)}
    modules = dict(model.named_modules())
    unknown = [n for n in blocks if n not in modules]
    if unknown:
        raise ConfigError(f"blocks {unknown[:3]} are not modules of the model")
    return {n: modules[n] for n in blocks}


def _block_shapes(model: nn.Module, targets: dict[str, nn.Module],
                  example: Example) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:  # fmt: skip
    """(channels, height) of each block's input and output, from one forward on one sample."""
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if args[0].dim() != 4 or out.dim() != 4:
                raise ConfigError(f"block {name} does not map a 4-D image tensor to one; lite residuals need both")
            shapes[name] = ((args[0].shape[1], args[0].shape[2]), (out.shape[1], out.shape[2]))
        return record

    modes = {m: m.training for m in model.modules()}
    try:  # one sample, in eval mode (no statistics updated), for real: a fake-tensor run costs seconds here
        with hooked(targets, forward=hook), torch.no_grad():
            args, kwargs = as_call(rebatch(example, 1))
            model.eval()(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return shapes
