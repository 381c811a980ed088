"""deepslim: make trained PyTorch models smaller, faster and cheaper to run — and prove it by measurement.

This module is the whole public API; everything else is reachable from it.
"""

from deepslim.analysis import (
    CostEstimate,
    DeviceProfile,
    EnergyTable,
    LayerCost,
    LayerProfile,
    Profile,
    estimate_cost,
    get_device,
    list_devices,
    profile,
    register_device,
)
from deepslim.analysis.measurement import Measurement
from deepslim.analysis.training import TrainingProfile, training_profile
from deepslim.compress.coding import ArchiveInfo, archive_info, decode, encode
from deepslim.compress.lowrank import FactorizeResult, SVDConfig, TuckerConfig, factorize_
from deepslim.compress.prune import (
    ChannelPruneConfig,
    GradualPruner,
    Importance,
    MagnitudePruneConfig,
    NMPruneConfig,
    Scope,
    bake_masks_,
    dependency_groups,
    plan_channel_pruning,
    prune_,
)
from deepslim.compress.quantize import (
    BinaryConfig,
    Calibration,
    Float16Config,
    KMeansConfig,
    LinearQuantConfig,
    PowerOfTwoConfig,
    TernaryConfig,
    cluster_,
    fold_batchnorm_,
    quantization_report,
    quantize_,
)
from deepslim.compress.tokens import (
    MergeTokensConfig,
    PruneTokensConfig,
    drop_layers_,
    merge_tokens_,
    prune_tokens_,
)
from deepslim.data import DataBundle, Preprocessing, list_datasets, load_data, register_dataset
from deepslim.errors import (
    ArchiveError,
    ConfigError,
    DataError,
    DeepSlimError,
    ExportError,
    InputShapeError,
    ModelLoadError,
    UnknownNameError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from deepslim.export import (
    BenchResult,
    CompareResult,
    ExportResult,
    benchmark,
    compare,
    export_onnx,
    export_openvino,
    interleave,
)
from deepslim.models import create_model, example_input, list_models, load_model, register_model, save_model
from deepslim.models.adapters import LayerKind, register_layer_kind
from deepslim.pipeline import Recipe, RunResult, load_recipe, measure, run_recipe
from deepslim.search import Sensitivity, sensitivity
from deepslim.tasks import Task, get_task, list_tasks
from deepslim.train import EvalResult, FitResult, KDConfig, distill, distill_ddp, evaluate, fidelity, fit, fit_ddp
from deepslim.train.ondevice import bias_only_, plan_sparse_update, sparse_update_, tinytl_

__version__ = "0.1.0"

__all__ = [
    "ArchiveError", "ArchiveInfo", "BenchResult", "BinaryConfig", "Calibration", "ChannelPruneConfig",
    "CompareResult", "ConfigError", "CostEstimate", "DataBundle", "DataError", "DeepSlimError", "DeviceProfile",
    "EnergyTable", "EvalResult", "ExportError", "ExportResult", "FactorizeResult", "FitResult", "Float16Config",
    "GradualPruner", "Importance", "InputShapeError", "KDConfig", "KMeansConfig", "LayerCost", "LayerKind",
    "LayerProfile", "LinearQuantConfig", "MagnitudePruneConfig", "Measurement", "MergeTokensConfig", "ModelLoadError",
    "NMPruneConfig", "PowerOfTwoConfig", "Preprocessing", "Profile", "PruneTokensConfig", "Recipe", "RunResult",
    "Scope", "Sensitivity", "SVDConfig", "Task", "TernaryConfig", "TrainingProfile", "TuckerConfig",
    "UnknownNameError", "UnsupportedModelError", "UnsupportedOpError", "archive_info", "bake_masks_", "benchmark",
    "bias_only_", "cluster_", "compare", "create_model", "decode", "dependency_groups", "distill", "distill_ddp",
    "drop_layers_", "encode", "estimate_cost", "evaluate", "example_input", "export_onnx", "export_openvino",
    "factorize_", "fidelity", "fit", "fit_ddp", "fold_batchnorm_", "get_device", "get_task", "interleave",
    "list_datasets", "list_devices", "list_models", "list_tasks", "load_data", "load_model", "load_recipe", "measure",
    "merge_tokens_", "plan_channel_pruning", "plan_sparse_update", "profile", "prune_", "prune_tokens_",
    "quantization_report", "quantize_", "register_dataset", "register_device", "register_layer_kind",
    "register_model", "run_recipe", "save_model", "sensitivity", "sparse_update_", "tinytl_", "training_profile",
]  # fmt: skip
