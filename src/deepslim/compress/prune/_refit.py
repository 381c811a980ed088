"""Layer-wise reconstruction after head/FFN pruning: refit each pruned block's output projection by least squares.

After units are removed, the output projection (attention output, FFN down projection) still holds the weights it
had when every unit fed it. Solving min ‖X'W' + b' − Y‖² — X' the kept units' activations in the *pruned* model
(so drift from earlier blocks is corrected too), Y the original block's outputs in the original model, on the
calibration data — gives the best linear repair in closed form, block after block in model order: a few forward
passes instead of a training run. After Kwon et al., "A Fast Post-Training Pruning Framework for Transformers",
NeurIPS 2022 (layer-wise reconstruction by linear least squares); this implementation is our own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.models.adapters import layer_kind, weight_of
from deepslim.tasks import call_model

MAX_ROWS = 16384  # activation rows kept per block (enough for a 1,536-wide projection; bounds memory)


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs: the rest of the forward is not run."""


def _rows(t: torch.Tensor, batch: Any) -> torch.Tensor:
    """(rows, features) of an activation (..., features): real tokens only when the batch says which they are."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and mask.shape == t.shape[:-1]:
        return t[mask.bool()]
    return t.reshape(-1, t.shape[-1])


def _capture(model: nn.Module, m: nn.Module, batches: Sequence[Any], inputs: bool,
             model_inputs: Callable[[Any], Any]) -> torch.Tensor:  # fmt: skip
    """Rows of ``m``'s input (``inputs=True``) or output over ``batches``, stopping each forward at ``m``."""
    found: list[torch.Tensor] = []
    current: list[Any] = [None]

    def pre(_: nn.Module, args: tuple[Any, ...]) -> None:
        if inputs:
            found.append(_rows(args[0].detach(), current[0]).double().cpu())
            raise _Stop

    def post(_: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        found.append(_rows(out.detach(), current[0]).double().cpu())
        raise _Stop

    with hooked({"": m}, pre=lambda _: pre, forward=lambda _: post), inference_mode(model), torch.no_grad():
        for batch in batches:
            current[0] = model_inputs(batch)
            with contextlib.suppress(_Stop):
                call_model(model, current[0])
    return torch.cat(found)[:MAX_ROWS]


def _recorder(seen: list[int], index: int) -> Callable[..., None]:
    return lambda *_: seen.append(index)


def forward_order(model: nn.Module, layers: Sequence[nn.Module], batch: Any,
                  model_inputs: Callable[[Any], Any]) -> list[int]:  # fmt: skip
    """Indices of ``layers`` in the order a forward pass on ``batch`` runs them (layers it does not run last, in
    their given order). Blocks are found in module order, which need not be the order of computation: a BERT layer's
    feed-forward block is the layer module itself, listed before the attention module inside it, yet runs after it."""
    seen: list[int] = []
    with (hooked({str(i): m for i, m in enumerate(layers)}, pre=lambda name: _recorder(seen, int(name))),
          inference_mode(model), torch.no_grad()):  # fmt: skip
        call_model(model, model_inputs(batch))
    order = list(dict.fromkeys(seen))
    return order + [i for i in range(len(layers)) if i not in order]


def targets(model: nn.Module, layers: Sequence[nn.Module], batches: Sequence[Any],
            model_inputs: Callable[[Any], Any], inputs: Sequence[bool] = ()) -> list[torch.Tensor]:  # fmt: skip
    """The original outputs (rows, out) of each layer in ``layers`` on ``batches`` (before pruning); its inputs
    instead where ``inputs`` says so."""
    return [_capture(model, m, batches, i < len(inputs) and inputs[i], model_inputs) for i, m in enumerate(layers)]


def refit_(model: nn.Module, layer: nn.Module, target: torch.Tensor, batches: Sequence[Any],
           model_inputs: Callable[[Any], Any], ridge: float = 1e-4) -> float:  # fmt: skip
    """Refit ``layer``'s weight (and bias) so that the pruned model reproduces ``target``; returns the relative
    residual ‖X'W' + b' − Y‖ / ‖Y‖ after the fit."""
    x = _capture(model, layer, batches, True, model_inputs)  # (N, k)
    bias = getattr(layer, "bias", None)
    if bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    solution = torch.linalg.solve(gram, x.T @ target)  # (k [+1], out)
    kind = layer_kind(layer)
    weight = weight_of(layer)
    k = weight.shape[kind.in_dim] if kind is not None and kind.in_dim is not None else x.shape[1]
    with torch.no_grad():
        w = solution[:k]
        weight.copy_((w.T if kind is not None and kind.in_dim == 1 else w).to(weight))
        if isinstance(bias, torch.Tensor):
            bias.copy_(solution[k].to(bias))
    residual = (x @ solution - target).norm() / target.norm().clamp_min(1e-12)
    return float(residual)


def _standardized(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Where ``scale_`` measures the error without a normalization to read: each token's row centred (a LayerNorm
    next removes its mean) and each feature divided by the target's spread in it, so that BERT's few outsized
    features do not outweigh the rest."""
    centred = target - target.mean(1, keepdim=True)
    spread = centred.std(0)
    inv = 1.0 / spread.clamp_min(1e-3 * float(spread.mean()) + 1e-12)
    return lambda t: (t - t.mean(-1, keepdim=True)) * inv


def _blocksum(t: torch.Tensor, width: int) -> torch.Tensor:
    """(k·width, k·width) -> (k, k), or (k·width,) -> (k,): sums over each unit's ``width`` features."""
    k = t.shape[0] // width
    return t.reshape(k, width, k, width).sum((1, 3)) if t.ndim == 2 else t.reshape(k, width).sum(1)


def next_norm(model: nn.Module, layer: nn.Module, batch: Any, model_inputs: Callable[[Any], Any]) -> nn.Module | None:
    """The first normalization (a module whose class name ends in ``LayerNorm`` or ``RMSNorm``) that a forward pass
    on ``batch`` runs after ``layer``, or None: on BERT the LayerNorm of ``layer``'s output plus the residual, on
    pre-norm models the next block's input norm; either way what the rest of the model reads."""
    return next_norms(model, [layer], batch, model_inputs)[0]


def next_norms(model: nn.Module, layers: Sequence[nn.Module], batch: Any,
               model_inputs: Callable[[Any], Any]) -> list[nn.Module | None]:  # fmt: skip
    """:func:`next_norm` of each of ``layers``, from one forward pass."""
    norms = [m for m in model.modules() if type(m).__name__.endswith(("LayerNorm", "RMSNorm"))]
    modules = {f"l{i}": m for i, m in enumerate(layers)} | {f"n{i}": m for i, m in enumerate(norms)}
    seen: list[str] = []
    with (hooked(modules, pre=lambda name: lambda *_: seen.append(name)), inference_mode(model),
          torch.no_grad()):  # fmt: skip
        call_model(model, model_inputs(batch))
    found: list[nn.Module | None] = []
    for i, layer in enumerate(layers):
        after = seen[seen.index(f"l{i}") + 1 :] if f"l{i}" in seen else []
        found.append(next((modules[n] for n in after if n[0] == "n" and modules[n] is not layer), None))
    return found


def _norm_space(norm: nn.Module, target: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The linearized output space of ``norm`` at the original inputs ``target`` (rows): a change d of a token's
    input moves its output by about γ ⊙ (d − mean(d)) / σ (no centring for an RMSNorm). Returns the map of a
    change (rows, or columns of a weight through ``.T``) without the 1/σ, and 1/σ per token."""
    centre = not type(norm).__name__.endswith("RMSNorm")
    z = target - target.mean(1, keepdim=True) if centre else target
    inv_sigma = 1.0 / z.pow(2).mean(1).add(1e-12).sqrt()
    weight = getattr(norm, "weight", None)
    gamma = weight.detach().double().cpu() if isinstance(weight, torch.Tensor) else torch.ones(target.shape[1])
    return (lambda t: (t - t.mean(-1, keepdim=True) if centre else t) * gamma), inv_sigma


def scale_(model: nn.Module, layer: nn.Module, target: torch.Tensor, batches: Sequence[Any],
           model_inputs: Callable[[Any], Any], width: int, ridge: float = 1e-3,
           norm: nn.Module | None = None) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Mask tuning (Kwon et al., NeurIPS 2022): one scale per kept unit — ``width`` consecutive input features of
    ``layer`` — fitted by least squares, the scales multiplying the unit's columns of the weight: a few unknowns per
    block (one per head or hidden unit) instead of the whole matrix. ``ridge`` (times the mean diagonal) pulls each
    scale towards 1 (the unit as it was). Returns (the scales, the relative residual after the fit).

    With ``norm`` (:func:`next_norm`), ``target`` is that norm's input in the original model and the error is the
    change of the norm's output (:func:`_norm_space`): the residual stream's drift from the blocks before counts,
    and a token weighs by its own scale, as the norm sees it. Without, ``target`` is ``layer``'s original output and
    the error is measured in :func:`_standardized`.

    With X the inputs (each token's row over σ), M the weight's columns mapped into the space and E the error to
    remove there, the normal equations for d = scales − 1 are G d = r with G = blocksum((XᵀX) ⊙ (MᵀM)) and
    r = blocksum(Σ_tokens X ⊙ (E M)): no (tokens × units × features) array is formed."""
    kind = layer_kind(layer)
    weight = weight_of(layer)
    w = weight.detach().double().cpu()
    w = w if kind is None or kind.in_dim == 1 else w.T  # (out, in)
    if norm is None:
        x = _capture(model, layer, batches, True, model_inputs)  # (N, k·width)
        bias = getattr(layer, "bias", None)
        now = x @ w.T + (bias.detach().double().cpu() if isinstance(bias, torch.Tensor) else 0.0)
        space, inv_sigma = _standardized(target), torch.ones(len(x), dtype=x.dtype)
    else:
        x, now = _capture_two(model, layer, norm, batches, model_inputs)
        space, inv_sigma = _norm_space(norm, target)
    x = x * inv_sigma[:, None]
    m_cols = space(w.T).T  # (out, in): each column is linear in the output, so the space maps it like a row
    e = space(target - now) * inv_sigma[:, None]  # (N, out)
    gram = _blocksum((x.T @ x) * (m_cols.T @ m_cols), width)
    rhs = _blocksum((x * (e @ m_cols)).sum(0), width)
    lam = ridge * float(gram.diagonal().mean())
    delta = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), rhs)
    energy = float(e.pow(2).sum())
    left = float(delta @ gram @ delta - 2 * delta @ rhs) + energy
    scales = 1.0 + delta
    with torch.no_grad():
        per_feature = scales.repeat_interleave(width).to(weight)
        weight.mul_(per_feature if kind is None or kind.in_dim == 1 else per_feature[:, None])
    return scales.float(), max(left, 0.0) ** 0.5 / max(energy, 1e-30) ** 0.5


def _capture_two(model: nn.Module, layer: nn.Module, norm: nn.Module, batches: Sequence[Any],
                 model_inputs: Callable[[Any], Any]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Rows of ``layer``'s input and of ``norm``'s input (which it runs next) over ``batches``, same tokens."""
    found: dict[str, list[torch.Tensor]] = {"layer": [], "norm": []}
    current: list[Any] = [None]

    def pre(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            found[name].append(_rows(args[0].detach(), current[0]).double().cpu())
            if name == "norm" and len(found["norm"]) == len(found["layer"]):
                raise _Stop

        return hook

    with hooked({"layer": layer, "norm": norm}, pre=pre), inference_mode(model), torch.no_grad():
        for batch in batches:
            current[0] = model_inputs(batch)
            with contextlib.suppress(_Stop):
                call_model(model, current[0])
    return torch.cat(found["layer"])[:MAX_ROWS], torch.cat(found["norm"])[:MAX_ROWS]
