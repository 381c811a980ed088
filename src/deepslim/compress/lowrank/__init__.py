"""Low-rank factorization: a Linear becomes two (truncated SVD), a Conv2d becomes three (Tucker-2).

SVD of fully connected layers: Denton et al., "Exploiting Linear Structure Within Convolutional Networks for Efficient
Evaluation", NeurIPS 2014; Xue et al., "Restructuring of deep neural network acoustic models with SVD", 2013.
Tucker-2 decomposition of convolutions (1×1 → k×k core → 1×1), computed here by HOSVD: Kim et al., "Compression of
Deep Convolutional Neural Networks for Fast and Low Power Mobile Applications", ICLR 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.config import Config, Overrides, freeze_overrides, lookup, skip_only, unmatched
from deepslim.errors import ConfigError
from deepslim.models.adapters import Axis, LayerKind, layer_kind, weight_layers


@dataclass(frozen=True, kw_only=True)
class _RankRule(Config):
    """Exactly one of: ``rank_ratio`` (of the full rank), ``energy`` (fraction of squared singular values kept),
    ``mac_ratio`` (the factorized layer's MACs as a fraction of the original's)."""

    rank_ratio: float | None = None
    energy: float | None = None
    mac_ratio: float | None = None
    overrides: Overrides[None] = ()  # layer -> None skips it

    def __post_init__(self) -> None:
        given = [k for k in ("rank_ratio", "energy", "mac_ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{type(self).__name__} needs exactly one of rank_ratio, energy, mac_ratio "
                              f"(got {', '.join(given) or 'none'})")  # fmt: skip
        value = getattr(self, given[0])
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{given[0]} must be in (0, 1], got {value}")
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, skip_only("factorization")))


@dataclass(frozen=True, kw_only=True)
class SVDConfig(_RankRule):
    """Factorize every linear-like layer W (out × in) into (in → r) then (r → out) by truncated SVD.

    Linear-like: nn.Linear and its subclasses, Hugging Face's ``Conv1D`` (weight stored (in, out)) and registered
    layer kinds. A weight tied to another module (an LM head sharing the embedding) is left as it is and named."""


@dataclass(frozen=True, kw_only=True)
class TuckerConfig(_RankRule):
    """Factorize every nn.Conv2d (groups 1, kernel > 1) into 1×1 (in → r_in), k×k core, 1×1 (r_out → out)."""


@dataclass(frozen=True)
class FactorizedLayer:
    name: str
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int


@dataclass(frozen=True)
class FactorizeResult:
    layers: tuple[FactorizedLayer, ...]
    skipped: tuple[str, ...]  # layer: why it was left as it was

    @property
    def params_saved(self) -> int:
        return sum(lay.params_before - lay.params_after for lay in self.layers)

    @property
    def macs_saved(self) -> int:
        return sum(lay.macs_before - lay.macs_after for lay in self.layers)

    def __str__(self) -> str:
        rows = [f"{lay.name}: ranks {lay.ranks}, params {lay.params_before:,} -> {lay.params_after:,}, "
                f"MACs {lay.macs_before:,} -> {lay.macs_after:,}" for lay in self.layers]  # fmt: skip
        rows += [f"kept: {s}" for s in self.skipped]
        return "\n".join(rows + [f"saved {self.params_saved:,} parameters and {self.macs_saved:,} MACs"])


def _rank_for_energy(s: torch.Tensor, energy: float) -> int:
    cumulative = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64)).item()) + 1
    return min(rank, len(s))


def factorize_(model: nn.Module, config: SVDConfig | TuckerConfig, *,
               example_input: torch.Tensor | None = None) -> FactorizeResult:  # fmt: skip
    """Replace layers of ``model`` in place by their low-rank factorizations; report what was saved.

    A layer is replaced only when the factorization has fewer parameters. MACs are per example and need
    ``example_input`` (for spatial sizes and token counts); without it they are per output position.
    """
    svd = isinstance(config, SVDConfig)
    targets = factorizable_layers(model, svd=svd)
    bad = unmatched(config.overrides, targets)
    if bad:
        raise ConfigError(f"no {'Linear' if svd else 'Conv2d'} layer matches {', '.join(map(repr, bad))}")
    positions = _positions(model, targets, example_input)
    tied = _tied(model)
    done, skipped = [], []
    for name, m in targets.items():
        if lookup(config.overrides, name, default=...) is None:
            continue
        if name in tied:  # two factors replacing one of two holders would untie them and grow the model
            skipped.append(f"{name}: weight tied with {tied[name]} (factorizing it would untie the two and add "
                           "parameters); pass overrides={name!r: None} to silence this")
            continue
        if isinstance(config, SVDConfig):
            new, ranks, why = _svd(m, config)
        else:
            assert isinstance(m, nn.Conv2d)  # factorizable_layers(svd=False) holds convolutions only
            new, ranks, why = _tucker(m, config)
        if new is None:
            skipped.append(f"{name}: {why}")
            continue
        before, after = _params(m), _params(new)
        pos_in, pos_out = positions.get(name, (1, 1))
        done.append(FactorizedLayer(name, ranks, before, after, _weight(m).numel() * pos_out,
                                    _macs(new, pos_in, pos_out)))  # fmt: skip
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return FactorizeResult(tuple(done), tuple(skipped))


def factorizable_layers(model: nn.Module, *, svd: bool) -> dict[str, nn.Module]:
    """Linear-like layers (nn.Linear and subclasses, HF Conv1D, registered kinds) for SVD; Conv2d for Tucker."""
    if not svd:
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return {n: m for n, (m, kind) in weight_layers(model).items() if kind.axis is Axis.LAST and _weight(m).ndim == 2}


def _tied(model: nn.Module) -> dict[str, str]:
    """Layers whose weight is the same tensor as another module's parameter (a tied LM head): layer -> the others."""
    holders: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name)
    return {n: ", ".join(o for o in names if o != n) for names in holders.values() if len(names) > 1 for n in names}


def _weight(m: nn.Module) -> torch.Tensor:
    """The layer's weight as it computes it (a masked or parametrized weight included)."""
    w = getattr(m, "weight")  # noqa: B009  (a parametrized weight is no attribute of the module's own)
    if not isinstance(w, torch.Tensor):
        raise ConfigError(f"{type(m).__name__} has no weight tensor to factorize")
    return w


def _kind(m: nn.Module) -> LayerKind:
    kind = layer_kind(m)
    if kind is None:
        raise ConfigError(f"{type(m).__name__} is not a layer kind deepslim knows (register_layer_kind)")
    return kind


def _linear_weight(m: nn.Module) -> torch.Tensor:
    """The (out, in) matrix of a linear-like layer, whatever order it stores its weight in."""
    w = _weight(m).detach().float()
    return w if _kind(m).out_dim == 0 else w.T


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _macs(factorized: nn.Sequential, pos_in: int, pos_out: int) -> int:
    """MACs per example of a factorization: its first (1×1 / rank-r) layer runs at the input's positions (before
    any stride), the others at the output's."""
    return sum(_weight(layer).numel() * (pos_in if k == 0 else pos_out) for k, layer in enumerate(factorized))


def _svd(m: nn.Module, config: SVDConfig) -> tuple[nn.Sequential | None, tuple[int, ...], str]:
    w = _linear_weight(m)
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    if config.rank_ratio is not None:
        r = max(1, round(config.rank_ratio * len(s)))
    elif config.energy is not None:
        r = _rank_for_energy(s, config.energy)
    else:
        assert config.mac_ratio is not None  # exactly one of the three is set (checked by the config)
        r = max(1, math.floor(config.mac_ratio * out_f * in_f / (out_f + in_f)))
    if r * (in_f + out_f) >= out_f * in_f:
        return None, (r,), f"rank {r} would not save parameters ({in_f}x{out_f})"
    root = s[:r].sqrt()
    first = nn.Linear(in_f, r, bias=False)
    bias = getattr(m, "bias", None)
    second = nn.Linear(r, out_f, bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:r])  # (r, in)
        second.weight.copy_(u[:, :r] * root[None, :])  # (out, r)
        if bias is not None:
            second.bias.copy_(bias)
    w = _weight(m)
    return nn.Sequential(first, second).to(w.device, w.dtype), (r,), ""


def _mode_basis(unfolded: torch.Tensor, rule: _RankRule, share: float | None) -> torch.Tensor:
    u, s, _ = torch.linalg.svd(unfolded, full_matrices=False)
    if rule.energy is not None:
        r = _rank_for_energy(s, rule.energy)
    else:
        ratio = share if share is not None else rule.rank_ratio
        assert ratio is not None  # mac_ratio gives a share; otherwise rank_ratio is the one set
        r = max(1, round(ratio * len(s)))
    return u[:, :r]


def _tucker(m: nn.Conv2d, config: TuckerConfig) -> tuple[nn.Sequential | None, tuple[int, ...], str]:
    if m.groups != 1 or m.kernel_size == (1, 1):
        return None, (), "grouped or 1x1 convolution"
    w = m.weight.detach().float()  # (O, I, kh, kw)
    o, i, kh, kw = w.shape
    share = None
    if config.mac_ratio is not None:  # largest common rank fraction whose cost fits the budget
        budget = config.mac_ratio * o * i * kh * kw
        share = max((f / 100 for f in range(1, 101)
                     if i * round(f / 100 * i) + round(f / 100 * i) * round(f / 100 * o) * kh * kw
                     + round(f / 100 * o) * o <= budget), default=0.01)  # fmt: skip
    u_out = _mode_basis(w.flatten(1), config, share)  # (O, r_out)
    u_in = _mode_basis(w.transpose(0, 1).flatten(1), config, share)  # (I, r_in)
    r_out, r_in = u_out.shape[1], u_in.shape[1]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)  # (r_out, r_in, kh, kw)
    params_after = i * r_in + r_in * r_out * kh * kw + r_out * o
    if params_after >= o * i * kh * kw:
        return None, (r_in, r_out), f"ranks ({r_in}, {r_out}) would not save parameters"
    first = nn.Conv2d(i, r_in, 1, bias=False)
    mid = nn.Conv2d(r_in, r_out, cast(tuple[int, int], m.kernel_size), cast(tuple[int, int], m.stride),
                    cast("str | tuple[int, int]", m.padding), cast(tuple[int, int], m.dilation), bias=False,
                    padding_mode=m.padding_mode)  # fmt: skip
    last = nn.Conv2d(r_out, o, 1, bias=m.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u_in.T[:, :, None, None])
        mid.weight.copy_(core)
        last.weight.copy_(u_out[:, :, None, None])
        if m.bias is not None and last.bias is not None:
            last.bias.copy_(m.bias)
    return nn.Sequential(first, mid, last).to(m.weight.device, m.weight.dtype), (r_in, r_out), ""


def _positions(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor | None) -> dict[str, tuple[int, int]]:
    """Per layer and per example: how many positions (pixels, tokens) its input and output have."""
    if x is None:
        return {}
    found: dict[str, tuple[int, int]] = {}

    def record(name: str, m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> None:
        kind, shape = _kind(m), _weight(m).shape
        channels = (shape[kind.in_dim if kind.in_dim is not None else 1], shape[kind.out_dim])
        batch = out.shape[0] if kind.axis is Axis.CONV or out.ndim > 1 else 1
        found.setdefault(name, (inp.numel() // channels[0] // batch, out.numel() // channels[1] // batch))
        # a forward hook must return None, or it replaces the layer's output

    with (hooked(layers, forward=lambda n: lambda mod, a, out: record(n, mod, a[0], out)), inference_mode(model),
          torch.no_grad()):  # fmt: skip
        model(x)
    return found


__all__ = ["FactorizeResult", "FactorizedLayer", "SVDConfig", "TuckerConfig", "factorizable_layers", "factorize_"]
