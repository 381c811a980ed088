"""Attention-head and feed-forward pruning of transformers that physically removes heads and hidden units.

Works on any attention class an adapter describes (:mod:`deepslim.models.adapters`: BERT, RoBERTa, ELECTRA,
DistilBERT, ViT, DeiT, DINOv2, GPT-2, Llama, Mistral, Qwen2 and the zoo's own), not only on modules a graph can
trace: heads are reshaped inside the attention, so the channel dependency graph leaves them whole. A head (or a
key/value head with the query heads sharing it, under grouped-query attention) loses its query, key and value
rows and the columns of the output projection that read it; a hidden unit loses its row in the input projections
and its column in the output one. Removing a unit whose contribution is zero therefore changes nothing.

Importance on the task: every unit gets a gate (1.0) on the output projection's input, and ``sensitivity`` is the
squared norm of the Jacobian of the model's outputs with respect to the gate, summed over the calibration samples —
the first-order change of the outputs when the unit is removed (Michel et al., "Are Sixteen Heads Really Better than
One?", NeurIPS 2019, gate gradients; Molchanov et al., CVPR 2019, Taylor expansion). It needs no labels: the
Jacobian's norm is estimated with random projections of the outputs (E[(vᵀJ)²] = ‖J‖² for v ~ N(0, I), Hutchinson).
``magnitude`` needs no data: the norm of the unit's output-projection columns times that of its value (or input)
rows. Ranked globally, sensitivities are comparable across layers, so unimportant layers lose more.

Sensitivities of heads and of hidden units measure the same thing (the squared output change when the unit goes), so
they can be ranked together too: ``flops_ratio`` removes that share of the projections' multiply-accumulates, unit
by unit in order of sensitivity per multiply-accumulate it saves (a MiniLM head costs as much as 64 hidden units),
instead of a share of each kind fixed in advance. Measured on all-MiniLM-L6-v2 it did worse than fixed shares at the
same cut (27.8 % of the weights: mean cosine 0.840 against 0.898 for heads 1/3 + FFN 0.25, BENCHMARKS.md session
11): it removed two more heads, and a first-order estimate understates what removing a whole head costs. It is kept
as an option for models where that is not so; prefer fixed shares on BERT-like encoders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from deepslim.compress.prune import _refit, _surgery
from deepslim.compress.prune._head_scores import _counts, _joint_counts, _model_inputs, _take, sensitivity
from deepslim.config import Config, coerce_enum, matches
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.adapters import (
    AttentionAdapter,
    FFNAdapter,
    attention_adapter,
    ffn_adapter,
    get_count,
    layer_kind,
    looks_like_attention,
    set_count,
    submodule,
)

log = logging.getLogger(__name__)


class HeadImportance(Enum):
    SENSITIVITY = "sensitivity"  # output change when the unit is gated off, first order (needs calib_data)
    MAGNITUDE = "magnitude"  # weight norms (no data)


@dataclass(frozen=True, kw_only=True)
class HeadPruneConfig(Config):
    """Remove ``head_ratio`` of the attention heads and ``ffn_ratio`` of the feed-forward hidden units.

    ``flops_ratio`` > 0: remove that share of the blocks' projection weights (multiply-accumulates per token),
    heads and hidden units ranked together by sensitivity per weight removed; ``head_ratio`` and ``ffn_ratio`` are
    then the least share of each kind removed (sensitivity only: weight norms of heads and hidden units are not
    comparable). ``global_ranking``: rank units across layers (layers that matter less lose more; at least one head and
    ``round_to`` hidden units stay per layer), else each layer loses the same share. ``round_to``: hidden units are
    kept in multiples of it (vector-unit friendly). ``ignore``: attention or feed-forward modules (names or ``re:``
    patterns) kept whole. ``batches``: calibration batches read (sensitivity, refit); ``probes``: random projections
    per batch. ``refit`` (off by default): with calib_data, each pruned block's output projection is then refitted by
    least squares to the original block's outputs (:mod:`._refit`), in seconds. Measure it against ``refit=False``
    before using it: on all-MiniLM-L6-v2 (heads 1/3 + FFN 0.4, 256 broad-corpus texts) it made the pruned model
    worse, cosine 0.864 without and 0.639 with (BENCHMARKS.md session 12; perhaps because the fit weighs every
    token's raw output alike, while each token passes a LayerNorm next, and a few tokens carry BERT's outsized
    activations). ``scale`` (off by default; not with ``refit``): with calib_data, one scale per kept head and hidden
    unit fitted by least squares instead, block after block in the order of computation, the error read at the
    normalization that runs next, in its output space (:func:`._refit.scale_`, Kwon et al.'s mask tuning). On
    all-MiniLM-L6-v2 (heads 5/12 + FFN 0.3, 256 broad texts) it lifts the pruned model (cosine s32 0.886 -> 0.894,
    s128 0.763 -> 0.804; ~80 CPU-s) but the lead does not survive distillation: after 120 CPU-s it trails the
    unscaled model (s32 0.953 against 0.957, s128 0.899 against 0.905, BENCHMARKS.md session 15). Use it without a
    distillation budget. ``groups`` > 1: the calibration batches fall into that many consecutive runs (e.g. short
    texts, then long passages) and each unit is ranked by its largest normalized sensitivity over the runs
    (:func:`._head_scores.sensitivity`); on MiniLM (short texts, then 128-token passages) it did worse than their
    plain sum (s32 0.842 against 0.863, s128 0.734 against 0.797, right after pruning).
    """

    head_ratio: float = 0.0
    ffn_ratio: float = 0.0
    flops_ratio: float = 0.0
    importance: HeadImportance = HeadImportance.SENSITIVITY
    global_ranking: bool = True
    round_to: int = 8
    ignore: tuple[str, ...] = ()
    batches: int = 8
    probes: int = 2
    refit: bool = False
    scale: bool = False
    groups: int = 1

    def __post_init__(self) -> None:
        for what in ("head_ratio", "ffn_ratio", "flops_ratio"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{what} is the share of units removed, in [0, 1); got {value!r}")
        coerce_enum(self, "importance", HeadImportance)
        if self.flops_ratio > 0 and (self.importance is not HeadImportance.SENSITIVITY or not self.global_ranking):
            raise ConfigError("flops_ratio ranks heads and hidden units together by sensitivity: it needs "
                              "importance='sensitivity' and global_ranking=True (or set flops_ratio=0)")  # fmt: skip
        if self.refit and self.scale:
            raise ConfigError("refit and scale both repair the output projections: choose one")
        if self.groups > 1 and self.importance is not HeadImportance.SENSITIVITY:
            raise ConfigError(f"groups={self.groups} splits the sensitivity's calibration runs: it needs "
                              f"importance='sensitivity', got {self.importance.value!r}")  # fmt: skip
        for what in ("round_to", "batches", "probes", "groups"):
            if isinstance(getattr(self, what), bool) or not isinstance(getattr(self, what), int) or \
                    getattr(self, what) < 1:  # fmt: skip
                raise ConfigError(f"{what} must be an integer >= 1, got {getattr(self, what)!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))


@dataclass
class Block:
    """One attention module (units: heads or key/value groups) or feed-forward block (units: hidden units)."""

    name: str
    module: nn.Module
    adapter: AttentionAdapter | FFNAdapter
    units: int
    unit_width: int  # input features of the output projection per unit
    head_dim: int = 0  # attention only
    group: int = 1  # query heads per unit (grouped-query attention)

    @property
    def is_attention(self) -> bool:
        return isinstance(self.adapter, AttentionAdapter)

    @property
    def output(self) -> nn.Module:
        return submodule(self.module, self.adapter.output)

    def unit_cost(self) -> float:
        """Projection weights (multiply-accumulates per token) that go with one unit: its rows of the input
        projections and its columns of the output projection."""
        paths = [self.adapter.output]
        if isinstance(self.adapter, FFNAdapter):
            paths += list(self.adapter.inputs)
        elif self.adapter.qkv is not None and hasattr(self.module, self.adapter.qkv.split(".")[0]):
            paths.append(self.adapter.qkv)
        else:
            paths += [str(self.adapter.query), str(self.adapter.key), str(self.adapter.value)]
        return sum(_weight_numel(submodule(self.module, p)) for p in paths) / self.units


@dataclass(frozen=True)
class BlockPlan:
    name: str
    unit: str  # "heads" | "hidden units"
    width: int
    keep: int
    kept: tuple[int, ...]
    cost: float = 0.0  # projection weights per unit (Block.unit_cost)

    def __str__(self) -> str:
        return f"{self.name}: {self.width} -> {self.keep} {self.unit}"


@dataclass(frozen=True)
class HeadPruneResult:
    """What each block keeps (``blocks``, in model order) and the modules left whole and why (``skipped``)."""

    blocks: tuple[BlockPlan, ...]
    skipped: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join([str(b) for b in self.blocks] + [f"left whole: {s}" for s in self.skipped])

    def heads(self) -> tuple[int, int]:
        """(heads before, heads after) over the whole model (units of grouped-query attention count as one)."""
        att = [b for b in self.blocks if b.unit == "heads"]
        return sum(b.width for b in att), sum(b.keep for b in att)

    def macs(self) -> tuple[int, int]:
        """(before, after) projection weights of the blocks, = their multiply-accumulates per token (attention's
        token-by-token products, which also shrink with the heads, not counted)."""
        return round(sum(b.width * b.cost for b in self.blocks)), round(sum(b.keep * b.cost for b in self.blocks))


def _weight_numel(m: nn.Module) -> int:
    weight = getattr(m, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UnsupportedModelError(f"{type(m).__name__} has no weight tensor; its adapter must name a linear layer")
    return weight.numel()


def _width(m: nn.Module, side: str) -> int:
    kind = layer_kind(m)
    if kind is None or kind.in_dim is None:
        raise UnsupportedModelError(f"{type(m).__name__} is not a linear-like layer; its adapter must name one")
    weight = m.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[kind.out_dim if side == "out" else kind.in_dim])


def _attention_block(name: str, m: nn.Module, adapter: AttentionAdapter) -> Block:
    head_dim = get_count(m, adapter.head_dim)
    q_width = _width(submodule(m, adapter.output), "in")
    heads = q_width // head_dim
    if adapter.qkv is not None and hasattr(m, adapter.qkv.split(".")[0]):
        if _width(submodule(m, adapter.qkv), "out") != 3 * q_width:
            raise UnsupportedModelError(f"{name} ({type(m).__name__}): its fused projection {adapter.qkv} is "
                                        f"not [q; k; v] of {q_width} each; register an adapter describing it")
        kv = heads
    else:
        kv = _width(submodule(m, str(adapter.key)), "out") // head_dim
    if heads * head_dim != q_width or kv < 1 or heads % kv:
        raise UnsupportedModelError(f"{name} ({type(m).__name__}): {q_width} query features are not {heads} heads of "
                                    f"{head_dim} in {kv} key/value groups; check its adapter")  # fmt: skip
    return Block(name, m, adapter, units=kv, unit_width=heads // kv * head_dim, head_dim=head_dim, group=heads // kv)


def find_blocks(model: nn.Module, ignore: tuple[str, ...] = ()) -> tuple[list[Block], list[str]]:
    """Attention and feed-forward blocks of ``model`` described by adapters, and the modules ignored.

    An attention-like module no adapter describes (and no described module contains) is refused by class name.
    """
    blocks: list[Block] = []
    skipped: list[str] = []
    unknown: list[str] = []
    covered: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(c + ".") for c in covered):
            continue
        attn, ffn = attention_adapter(m), ffn_adapter(m)
        if attn is None and ffn is None:
            if looks_like_attention(m) and not any(attention_adapter(s) for s in m.modules()):
                unknown = [u for u in unknown if not name.startswith(u.split(" ")[0] + ".") and u.split(" ")[0]]
                unknown.append(f"{name} ({type(m).__module__}.{type(m).__qualname__})")  # the innermost ones
            continue
        if any(matches(p, name) for p in ignore):
            skipped.append(f"{name}: ignored")
        elif attn is not None:
            covered.append(name)
            blocks.append(_attention_block(name, m, attn))
        if ffn is not None and not any(matches(p, name) for p in ignore):
            output = submodule(m, ffn.output)
            blocks.append(Block(name, m, ffn, units=_width(output, "in"), unit_width=1))
    unknown = [u for u in unknown if not any(matches(p, u.split(" ")[0]) for p in ignore)]
    if unknown:
        raise UnsupportedModelError(
            f"no attention adapter describes {unknown[0]}; register one with deepslim.models.adapters."
            "register_attention_adapter(cls, AttentionAdapter(...)) or add it to ignore=(...)")
    return blocks, skipped


def _refuse_without_attention(model: nn.Module, head_ratio: float, ignore: tuple[str, ...]) -> None:
    """Head pruning found no attention module to prune: refuse, naming the modules shaped like one — three linear
    layers of one input width (queries, keys, values) or one that triples its width (the three fused) — unless the
    user ignored the attention on purpose (the model's described attention modules, all of them ignored; or, with none
    described, every module shaped like one matched by ``ignore``, itself or through a parent)."""

    def ignored(name: str) -> bool:
        parts = name.split(".")
        return any(matches(p, ".".join(parts[:i])) for p in ignore for i in range(1, len(parts) + 1))

    like = []
    for name, m in model.named_modules():
        linears = [c for c in m.children() if isinstance(c, nn.Linear)]
        widths = [c.in_features for c in linears]
        if any(c.out_features == 3 * c.in_features for c in linears) or (
                len(widths) >= 3 and max(widths.count(w) for w in widths) >= 3):  # fmt: skip
            like.append((name, type(m).__qualname__))
    if any(attention_adapter(m) is not None for m in model.modules()):
        return  # described attention modules, every one ignored on purpose: only the feed-forward blocks are pruned
    left = [f"{n or '(the model)'} ({cls})" for n, cls in like if not ignored(n)]
    if like and not left:
        return  # every module shaped like attention ignored on purpose
    hint = f"; modules shaped like one: {', '.join(left[:3])}{' …' if len(left) > 3 else ''}" if left else ""
    raise UnsupportedModelError(
        f"head_ratio={head_ratio} but no attention module of {type(model).__name__} is described by an adapter{hint}; "
        "register its class with deepslim.models.adapters.register_attention_adapter(cls, AttentionAdapter(...))")


def magnitude(blocks: list[Block]) -> list[torch.Tensor]:
    """Per unit: ‖output-projection columns‖ × ‖value rows‖ (heads) or ‖input rows‖ (hidden units)."""
    scores = []
    for b in blocks:
        out_cols = _unit_norms(b.output, "in", b.units)
        if isinstance(b.adapter, AttentionAdapter):
            source = _value_rows(b)
        else:
            source = torch.stack([_unit_norms(submodule(b.module, p), "out", b.units) for p in b.adapter.inputs]).sum(0)
        scores.append(out_cols * source)
    return scores


def _unit_norms(m: nn.Module, side: str, units: int) -> torch.Tensor:
    kind = layer_kind(m)
    assert kind is not None and kind.in_dim is not None
    weight = m.weight
    assert isinstance(weight, torch.Tensor)
    w = weight.detach().float().movedim(kind.in_dim if side == "in" else kind.out_dim, 0)
    return w.reshape(units, -1).norm(dim=1).cpu()


def _value_rows(b: Block) -> torch.Tensor:
    adapter = b.adapter
    assert isinstance(adapter, AttentionAdapter)
    if b.group == 1 and adapter.qkv is not None and hasattr(b.module, adapter.qkv.split(".")[0]):
        return _unit_norms(submodule(b.module, adapter.qkv), "out", 3 * b.units)[2 * b.units :]
    return _unit_norms(submodule(b.module, str(adapter.value)), "out", b.units)


def plan_head_pruning(model: nn.Module, config: HeadPruneConfig,
                      calib_data: Iterable[Any] | None = None) -> tuple[list[Block], HeadPruneResult]:  # fmt: skip
    """Which heads and hidden units each block keeps (most important first), without changing the model."""
    blocks, skipped = find_blocks(model, config.ignore)
    if config.head_ratio > 0 and not any(b.is_attention for b in blocks):
        _refuse_without_attention(model, config.head_ratio, config.ignore)
    kinds = [(True, config.head_ratio), (False, config.ffn_ratio)]
    chosen = [b for b in blocks if config.flops_ratio > 0 or any(b.is_attention == att and r > 0 for att, r in kinds)]
    if not chosen:
        if not blocks:
            raise UnsupportedModelError(f"{type(model).__name__} has no attention or feed-forward block an adapter "
                                        "describes; register one with deepslim.models.adapters."
                                        "register_attention_adapter")  # fmt: skip
        return blocks, HeadPruneResult(tuple(_whole(b) for b in blocks), tuple(skipped))
    if config.importance is HeadImportance.SENSITIVITY:
        if calib_data is None:
            raise ConfigError("importance='sensitivity' needs calib_data (batches of model inputs); or use "
                              "importance='magnitude'")  # fmt: skip
        scores = dict(zip(map(id, chosen), sensitivity(model, chosen, calib_data, batches=config.batches,
                                                       probes=config.probes, groups=config.groups),
                          strict=True))  # fmt: skip
    else:
        scores = dict(zip(map(id, chosen), magnitude(chosen), strict=True))
    keep: dict[int, int] = {}
    for att, ratio in kinds:
        group = [b for b in chosen if b.is_attention == att]
        got = [scores[id(b)] for b in group]
        if config.importance is HeadImportance.MAGNITUDE:  # weight norms differ from layer to layer: normalize
            got = [s / s.mean().clamp_min(1e-12) for s in got]
        floor, step = (1, 1) if att else (config.round_to, config.round_to)
        keep.update(zip(map(id, group), _counts(group, got, ratio, floor, step, config.global_ranking), strict=True))
    if config.flops_ratio > 0:
        joint = _joint_counts(chosen, [scores[id(b)] for b in chosen], [keep[id(b)] for b in chosen],
                              config.flops_ratio, config.round_to)  # fmt: skip
        keep.update(zip(map(id, chosen), joint, strict=True))
    plans = []
    for b in blocks:
        if id(b) not in keep:
            plans.append(_whole(b))
            continue
        kept = scores[id(b)].topk(keep[id(b)]).indices.sort().values
        plans.append(BlockPlan(b.name, _unit(b), b.units, keep[id(b)], tuple(kept.tolist()), b.unit_cost()))
    return blocks, HeadPruneResult(tuple(plans), tuple(skipped))


def _unit(b: Block) -> str:
    return "heads" if b.is_attention else "hidden units"


def _whole(b: Block) -> BlockPlan:
    return BlockPlan(b.name, _unit(b), b.units, b.units, tuple(range(b.units)), b.unit_cost())


def rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Features of the units in ``units`` when each unit spans ``width`` consecutive features."""
    return _surgery.head_rows(units, width)


def apply_block(b: Block, kept: torch.Tensor) -> None:
    """Keep units ``kept`` (sorted) of block ``b``: surgery on its projections, then its head-count attributes."""
    dev = next(b.output.parameters()).device
    kept = kept.to(dev)
    _surgery.keep_inputs(b.output, rows(kept, b.unit_width))
    if isinstance(b.adapter, FFNAdapter):
        for path in b.adapter.inputs:
            _surgery.keep_outputs(submodule(b.module, path), kept)
        return
    a = b.adapter
    q_rows, kv_rows = rows(kept, b.unit_width), rows(kept, b.head_dim)
    if a.qkv is not None and hasattr(b.module, a.qkv.split(".")[0]):
        inner = b.units * b.unit_width
        _surgery.keep_outputs(submodule(b.module, a.qkv), torch.cat([q_rows, kv_rows + inner, kv_rows + 2 * inner]))
    else:
        _surgery.keep_outputs(submodule(b.module, str(a.query)), q_rows)
        for path in (str(a.key), str(a.value)):
            _surgery.keep_outputs(submodule(b.module, path), kv_rows)
    heads = len(kept) * b.group
    for path, what in a.counts:
        set_count(b.module, path, heads if what == "heads" else heads * b.head_dim)


def prune_heads_(model: nn.Module, config: HeadPruneConfig,
                 calib_data: Iterable[Any] | None = None) -> HeadPruneResult:  # fmt: skip
    """Remove attention heads and feed-forward hidden units in place (see the module docstring); returns the plan.

    ``calib_data``: batches of model inputs (a tensor, a tuple of positional tensors, a dict of named ones, or
    (inputs, labels) pairs) for ``importance='sensitivity'``. Recover afterwards by distilling from the original
    model (``deepslim.train.distill``; for sentence encoders ``task="embedding"``).
    """
    blocks, result = plan_head_pruning(model, config, calib_data)
    pruned = [(b, p) for b, p in zip(blocks, result.blocks, strict=True) if p.keep < p.width]
    repair = config.refit or config.scale
    batches = list(_take(calib_data, config.batches)) if calib_data is not None and repair else []
    if repair and not batches:
        what = "refit" if config.refit else "scale"
        raise ConfigError(f"{what}=True repairs the pruned blocks on calibration batches: give calib_data (batches "
                          "of model inputs)")  # fmt: skip
    if not batches:
        for b, plan in pruned:
            apply_block(b, torch.tensor(plan.kept, dtype=torch.long))
    else:
        _repaired_(model, pruned, batches, config.scale)
    before, after = result.heads()
    log.info("head pruning: %d -> %d heads\n%s", before, after, result)
    return result


def _repaired_(model: nn.Module, pruned: list[tuple[Block, BlockPlan]], batches: list[Any], scale: bool) -> None:
    """Prune, then refit each pruned output projection (``scale``: its units' scales) in the order of computation:
    each block is fitted to inputs its predecessors repaired. The targets are read from the model before pruning:
    the projection's outputs, or for ``scale`` the input of the normalization that runs next (where there is one)."""
    pruned = [pruned[i] for i in _refit.forward_order(model, [b.output for b, _ in pruned], batches[0],
                                                      _model_inputs)]  # fmt: skip
    norms = _refit.next_norms(model, [b.output for b, _ in pruned], batches[0], _model_inputs) if scale else \
        [None] * len(pruned)
    wanted = _refit.targets(model, [n if n is not None else b.output for (b, _), n in zip(pruned, norms, strict=True)],
                            batches, _model_inputs, inputs=[n is not None for n in norms])  # fmt: skip
    for b, plan in pruned:
        apply_block(b, torch.tensor(plan.kept, dtype=torch.long))
    for (b, _), target, norm in zip(pruned, wanted, norms, strict=True):
        if scale:
            residual = _refit.scale_(model, b.output, target, batches, _model_inputs, b.unit_width, norm=norm)[1]
        else:
            residual = _refit.refit_(model, b.output, target, batches, _model_inputs)
        log.debug("%s %s.%s: relative residual %.4f", "scale" if scale else "refit", b.name, b.adapter.output,
                  residual)  # fmt: skip


def head_blocks(model: nn.Module, config: HeadPruneConfig | None = None, example_input: Any = None) -> list[str]:
    """Names of the attention and feed-forward blocks head pruning would act on (a technique's ``layers`` lister)."""
    return list(dict.fromkeys(b.name for b in find_blocks(model, config.ignore if config else ())[0]))
