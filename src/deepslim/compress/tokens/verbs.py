"""The verbs: ``merge_tokens_``, ``prune_tokens_`` and ``drop_layers_`` change a model in place and return it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from deepslim.compress.tokens.config import MergeTokensConfig, PruneTokensConfig, expand
from deepslim.compress.tokens.encoders import BertTokenReduction, LayerPlan, TokenVisionTransformer
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.hf import SentenceEncoder
from deepslim.models.transformer import VisionTransformer

log = logging.getLogger(__name__)


def _unsupported(model: nn.Module) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"token reduction does not know {type(model).__name__}: it works on BERT-style Hugging Face sentence "
        f"encoders (deepslim.models.hf.SentenceEncoder: load_model('hf:PATH') or 'all-minilm-l6-v2') and the zoo's "
        f"VisionTransformer; wrap other encoders in one of these or add an encoder to deepslim.compress.tokens")


def token_layers(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The encoder layers whose tokens are reduced (BERT layers, or ViT blocks)."""
    if isinstance(model, SentenceEncoder):
        layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
        if layers is None or not hasattr(layers[0], "attention") or not hasattr(layers[0].attention, "self"):
            raise _unsupported(model.encoder)
        return layers
    if isinstance(model, VisionTransformer):
        return model.blocks
    raise _unsupported(model)


def layer_plans(model: nn.Module) -> list[LayerPlan]:
    """What each layer does to its tokens now (no reduction: every plan inactive)."""
    n = len(token_layers(model))
    if isinstance(model, SentenceEncoder) and isinstance(model.reduction, BertTokenReduction):
        return list(model.reduction.plans)
    if isinstance(model, TokenVisionTransformer):
        return list(model.token_plans)
    return [LayerPlan()] * n


def _install(model: nn.Module, plans: list[LayerPlan], pool_removed: bool | None = None) -> nn.Module:
    if isinstance(model, SentenceEncoder):
        if pool_removed is None:  # keep what the model had
            pool_removed = isinstance(model.reduction, BertTokenReduction) and model.reduction.pool_removed
        model.reduction = BertTokenReduction(plans, pool_removed=pool_removed)
    else:
        model.__class__ = TokenVisionTransformer  # same module, same weights: a forward that reduces tokens
        setattr(model, "token_plans", plans)  # noqa: B010 (an attribute of the class it now has)
    return model


def _check_mix(plans: list[LayerPlan]) -> list[LayerPlan]:
    if any(p.threshold is not None for p in plans) and any(p.r > 0 or p.keep_ratio < 1.0 for p in plans):
        raise ConfigError("threshold pruning (a token count that depends on the text) cannot be combined with "
                          "merging or keep_ratio (fixed counts); choose one of them for the model")  # fmt: skip
    return plans


def merge_tokens_(model: nn.Module, config: MergeTokensConfig) -> nn.Module:
    """Merge ``config.r`` tokens per layer (ToMe, Bolya et al., ICLR 2023); other token settings are kept."""
    plans = layer_plans(model)
    rs = expand(config.r, len(plans), "r")
    log.info("merging %s tokens per layer (metric %s)", rs, config.metric)
    return _install(model, _check_mix([replace(p, r=r, metric=config.metric) for p, r in zip(plans, rs, strict=True)]))


def prune_tokens_(model: nn.Module, config: PruneTokensConfig) -> nn.Module:
    """Prune tokens by attention received (PoWER-BERT, LTP): a share per layer (merging settings are kept), or
    per-layer thresholds (on a model without merging)."""
    plans = layer_plans(model)
    keeps = expand(config.keep_ratio, len(plans), "keep_ratio")
    if config.threshold is not None:
        thresholds = expand(config.threshold, len(plans), "threshold")
        log.info("token thresholds per layer: %s", thresholds)
        return _install(model, _check_mix([replace(p, threshold=float(t))
                                           for p, t in zip(plans, thresholds, strict=True)]),
                        config.pool_removed)  # fmt: skip
    return _install(model, _check_mix([replace(p, keep_ratio=float(k), threshold=None)
                                       for p, k in zip(plans, keeps, strict=True)]), config.pool_removed)  # fmt: skip


def drop_layers_(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the encoder layers listed in ``keep`` (in order), e.g. ``[0, 2, 4]`` of six; recover by distilling
    from the full model (MiniLM/TinyBERT-style students take every other layer of their teacher)."""
    layers = token_layers(model)
    n = len(layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(f"keep lists distinct layer indices in increasing order, each in 0..{n - 1}; got {keep}")
    plans = layer_plans(model)
    kept = [layers[i] for i in keep]
    if isinstance(model, SentenceEncoder):
        model.encoder.encoder.layer = nn.ModuleList(kept)
        model.encoder.config.num_hidden_layers = len(kept)
        if isinstance(model.reduction, BertTokenReduction):
            model.reduction = BertTokenReduction([plans[i] for i in keep], pool_removed=model.reduction.pool_removed)
    else:
        model.blocks = nn.Sequential(*kept)
        if isinstance(model, TokenVisionTransformer):
            model.token_plans = [plans[i] for i in keep]
    return model
