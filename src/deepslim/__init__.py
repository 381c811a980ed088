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
from deepslim.export import BenchResult, CompareResult, ExportResult, benchmark, compare, export_onnx, interleave
from deepslim.models import create_model, example_input, list_models, load_model, register_model, save_model
from deepslim.pipeline import Recipe, RunResult, load_recipe, run_recipe
from deepslim.search import Sensitivity, sensitivity
from deepslim.train import EvalResult, FitResult, KDConfig, distill, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "ArchiveError", "ArchiveInfo", "BenchResult", "BinaryConfig", "Calibration", "ChannelPruneConfig",
    "CompareResult", "ConfigError", "CostEstimate", "DataBundle", "DataError", "DeepSlimError", "DeviceProfile",
    "EnergyTable", "EvalResult", "ExportError", "ExportResult", "FactorizeResult", "FitResult", "Float16Config",
    "GradualPruner", "Importance", "InputShapeError", "KDConfig", "KMeansConfig", "LayerCost", "LayerProfile",
    "LinearQuantConfig", "MagnitudePruneConfig", "ModelLoadError", "NMPruneConfig", "PowerOfTwoConfig", "Profile",
    "Recipe", "RunResult", "Scope", "Sensitivity", "SVDConfig", "TernaryConfig", "TuckerConfig", "UnknownNameError",
    "UnsupportedModelError", "UnsupportedOpError", "archive_info", "bake_masks_", "benchmark", "cluster_", "compare",
    "create_model", "decode", "dependency_groups", "distill", "encode", "estimate_cost", "evaluate", "example_input",
    "export_onnx", "factorize_", "fit", "fold_batchnorm_", "get_device", "interleave", "list_datasets", "list_devices",
    "list_models", "load_data", "load_model", "load_recipe", "plan_channel_pruning", "profile", "prune_",
    "quantization_report", "quantize_", "register_dataset", "register_device", "register_model", "run_recipe",
    "save_model", "sensitivity",
]  # fmt: skip
