"""The built-in techniques, registered once (``deepslim.list_techniques()`` lists them; docs/extending.md adds one).

A recipe stage ``- KIND: {method: NAME, ...}`` runs the technique registered as NAME; the first technique of each
kind below is that kind's default method. ``lr`` is the default learning rate of the fine-tuning a recipe stage runs
after the technique (k-means centroids and quantization scales take smaller steps than free weights).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from deepslim.compress.lowrank import SVDConfig, TuckerConfig, factorizable_layers, factorize_
from deepslim.compress.prune import (
    BlockDropConfig,
    ChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    NMPruneConfig,
    plan_channel_pruning,
    prune_,
)
from deepslim.compress.prune.heads import head_blocks
from deepslim.compress.prune.masks import prunable_layers
from deepslim.compress.quantize import (
    BinaryConfig,
    Float16Config,
    KMeansConfig,
    LinearQuantConfig,
    PowerOfTwoConfig,
    TernaryConfig,
    cluster_,
    quantize_,
)
from deepslim.compress.tokens import MergeTokensConfig, PruneTokensConfig, merge_tokens_, prune_tokens_
from deepslim.errors import ConfigError
from deepslim.models.adapters import weight_layers
from deepslim.techniques import register_technique


# the layers a per-layer override addresses (what sensitivity and search vary one at a time)
def _prunable(model: nn.Module, config: Any, example_input: Any = None) -> list[str]:
    return list(prunable_layers(model))


def _channel_groups(model: nn.Module, config: Any, example_input: Any = None) -> list[str]:
    """The first layer of each prunable channel group (an override on it sets the whole group's ratio)."""
    if example_input is None:
        raise ConfigError("channel pruning needs example_input to find its groups")
    plan = plan_channel_pruning(model, replace(config, ratio=0.0, overrides=()), example_input)
    return [g.owners[0] for g in plan.groups]


def _weight_layers(model: nn.Module, config: Any, example_input: Any = None) -> list[str]:
    return list(weight_layers(model))


def _linear_like(model: nn.Module, config: Any, example_input: Any = None) -> list[str]:
    return list(factorizable_layers(model, svd=True))


def _spatial_convs(model: nn.Module, config: Any, example_input: Any = None) -> list[str]:
    return [n for n, m in factorizable_layers(model, svd=False).items()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1)]  # fmt: skip



register_technique("magnitude", MagnitudePruneConfig, prune_, kind="prune", layers=_prunable,
                   description="unstructured magnitude pruning with masks (Han et al. 2015)")
register_technique("channel", ChannelPruneConfig, prune_, kind="prune", layers=_channel_groups,
                   description="structured channel pruning that physically removes channels, heads and units")
register_technique("nm", NMPruneConfig, prune_, kind="prune", layers=_prunable,
                   description="N:M semi-structured sparsity (e.g. 2:4) with masks")
register_technique("heads", HeadPruneConfig, prune_, kind="prune", layers=head_blocks,
                   description="attention heads and feed-forward units of transformers, physically removed (adapters)")
register_technique("depth", BlockDropConfig, prune_, kind="prune",
                   description="whole residual blocks replaced by identities (elastic depth: fewer nodes)")
register_technique("linear", LinearQuantConfig, quantize_, kind="quantize", lr=1e-4, layers=_weight_layers,
                   description="linear integer quantization of weights and activations (PTQ; QAT with qat=true)")
register_technique("half", Float16Config, quantize_, kind="quantize", lr=1e-4, layers=_weight_layers,
                   description="half precision: store and run layers in fp16 or bf16")
register_technique("pow2", PowerOfTwoConfig, quantize_, kind="quantize", lr=1e-4, layers=_weight_layers,
                   description="power-of-two weights (shifts instead of multiplications)")
register_technique("binary", BinaryConfig, quantize_, kind="quantize", lr=1e-4, layers=_weight_layers,
                   description="binary weights +-alpha per output channel")
register_technique("ternary", TernaryConfig, quantize_, kind="quantize", lr=1e-4, layers=_weight_layers,
                   description="ternary weights {-alpha, 0, +alpha} per output channel")
register_technique("kmeans", KMeansConfig, cluster_, kind="cluster", lr=1e-4, layers=_weight_layers,
                   description="k-means weight sharing with a 2^bits-entry codebook per layer (Deep Compression)")
register_technique("svd", SVDConfig, factorize_, kind="factorize", replaces_layers=True, layers=_linear_like,
                   description="truncated SVD of linear layers (one layer becomes two)")
register_technique("tucker", TuckerConfig, factorize_, kind="factorize", replaces_layers=True,
                   layers=_spatial_convs,
                   description="Tucker-2 decomposition of convolutions (one layer becomes three)")
register_technique("merge_tokens", MergeTokensConfig, merge_tokens_, kind="tokens",
                   description="token merging in transformer encoders (ToMe, Bolya et al. 2023)")
register_technique("prune_tokens", PruneTokensConfig, prune_tokens_, kind="tokens",
                   description="token pruning by attention received (PoWER-BERT, LTP)")
