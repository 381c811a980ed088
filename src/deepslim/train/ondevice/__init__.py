"""Memory-efficient on-device training: TinyTL (Cai et al., NeurIPS 2020) and sparse update (Lin et al., NeurIPS 2022).

The layers keep for backward only what the gradients that train need (:mod:`.modules`); :func:`tinytl_` and
:func:`bias_only_` convert a model in place; :func:`plan_sparse_update` chooses which weights and biases to update
under a memory budget, counted by :func:`deepslim.analysis.training.training_profile`.
"""

from deepslim.train.ondevice._functions import pack_bits, unpack_bits
from deepslim.train.ondevice.convert import (
    bias_only_,
    efficient_,
    recalibrate_statistics_,
    residual_blocks,
    tinytl_,
    uncovered_layers,
)
from deepslim.train.ondevice.finetune import MODES, OnDeviceResult, finetune_ondevice, smallest_peak
from deepslim.train.ondevice.modules import (
    BlockAvgPool2d,
    CompactMaxPool2d,
    FrozenBatchNorm2d,
    FrozenConv2d,
    FrozenLinear,
    LiteResidual,
    PackedDropout,
    PackedReLU,
    PackedReLU6,
)
from deepslim.train.ondevice.sparse import SparseUpdatePlan, checkpoint_sequential_, plan_sparse_update, sparse_update_

__all__ = [
    "BlockAvgPool2d",
    "CompactMaxPool2d",
    "FrozenBatchNorm2d",
    "FrozenConv2d",
    "FrozenLinear",
    "LiteResidual",
    "MODES",
    "OnDeviceResult",
    "PackedDropout",
    "PackedReLU",
    "PackedReLU6",
    "SparseUpdatePlan",
    "bias_only_",
    "checkpoint_sequential_",
    "efficient_",
    "finetune_ondevice",
    "pack_bits",
    "plan_sparse_update",
    "recalibrate_statistics_",
    "residual_blocks",
    "smallest_peak",
    "sparse_update_",
    "tinytl_",
    "uncovered_layers",
    "unpack_bits",
]
