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
from deepslim.data import DataBundle, list_datasets, load_data, register_dataset
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
from deepslim.export import BenchResult, ExportResult, benchmark, export_onnx
from deepslim.models import create_model, example_input, list_models, load_model, register_model, save_model
from deepslim.pipeline import Recipe, RunResult, load_recipe, run_recipe
from deepslim.search import Sensitivity, sensitivity
from deepslim.train import EvalResult, FitResult, KDConfig, distill, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "ArchiveInfo", "KDConfig", "Recipe", "RunResult", "load_recipe", "run_recipe", "archive_info", "decode",
    "distill", "encode",
    "ChannelPruneConfig", "FactorizeResult", "GradualPruner", "Importance", "MagnitudePruneConfig", "NMPruneConfig",
    "SVDConfig", "Scope", "Sensitivity", "TuckerConfig", "bake_masks_", "dependency_groups", "factorize_",
    "plan_channel_pruning", "prune_", "sensitivity", "BenchResult", "ExportResult", "benchmark", "export_onnx",
    "BinaryConfig", "Calibration", "Float16Config", "KMeansConfig", "LinearQuantConfig", "PowerOfTwoConfig",
    "TernaryConfig", "cluster_", "fold_batchnorm_", "quantization_report", "quantize_",
    "ArchiveError", "ConfigError", "CostEstimate", "DataBundle", "DataError", "DeepSlimError", "DeviceProfile",
    "EnergyTable", "EvalResult", "ExportError", "FitResult", "InputShapeError", "LayerCost", "LayerProfile",
    "ModelLoadError", "Profile", "UnknownNameError", "UnsupportedModelError", "UnsupportedOpError", "create_model",
    "estimate_cost", "evaluate", "example_input", "fit", "get_device", "list_datasets", "list_devices", "list_models",
    "load_data", "load_model", "profile", "register_dataset", "register_device", "register_model", "save_model",
]  # fmt: skip
