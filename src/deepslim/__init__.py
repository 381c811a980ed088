"""deepslim: make trained PyTorch models smaller, faster and cheaper to run — and prove it by measurement.

This module is the whole public API; everything else is reachable from it.
"""

from deepslim._version import __version__ as __version__
from deepslim.analysis import (
    CostEstimate,
    DeviceProfile,
    EnergyTable,
    LayerCost,
    LayerProfile,
    Profile,
    TimeProfile,
    estimate_cost,
    get_device,
    list_devices,
    profile,
    register_device,
    time_onnx,
)
from deepslim.analysis.measurement import Measurement
from deepslim.analysis.training import TrainingProfile, measure_peak_bytes, measure_saved_bytes, training_profile
from deepslim.compress.coding import ArchiveInfo, archive_info, decode, encode
from deepslim.compress.lowrank import FactorizeResult, SVDConfig, TuckerConfig, factorize_
from deepslim.compress.prune import (
    BlockDropConfig,
    ChannelPruneConfig,
    GradualPruner,
    HeadPruneConfig,
    Importance,
    MagnitudePruneConfig,
    NMPruneConfig,
    Scope,
    bake_masks_,
    dependency_groups,
    droppable_blocks,
    plan_channel_pruning,
    prune_,
    prune_heads_,
)
from deepslim.compress.quantize import (
    BinaryConfig,
    Calibration,
    Fidelity,
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
    QuantizationError,
    UnknownNameError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from deepslim.export import (
    BenchResult,
    CompareResult,
    ExportResult,
    FloatSelection,
    FusedInt8Config,
    FusedInt8Result,
    FusedInt8Sensitivity,
    benchmark,
    compare,
    export_fused_int8,
    export_onnx,
    export_openvino,
    fused_int8_sensitivity,
    interleave,
)
from deepslim.models import create_model, example_input, list_models, load_model, register_model, save_model
from deepslim.models.adapters import (
    AttentionAdapter,
    FFNAdapter,
    LayerKind,
    register_attention_adapter,
    register_layer_kind,
)
from deepslim.pipeline import (
    DistillStage,
    EncodeStage,
    ExportStage,
    FinetuneStage,
    Recipe,
    RunResult,
    TechniqueStage,
    TrainStage,
    load_recipe,
    measure,
    run_recipe,
)

# importing the report package registers report.html with every recipe run (the pipeline does not import it)
from deepslim.report import ReportResult, write_report
from deepslim.search import (
    Budget,
    LatencyTable,
    Policy,
    SearchResult,
    SearchSpace,
    Sensitivity,
    check_table,
    search,  # the function; the sub-package stays importable as deepslim.search.<module>
    sensitivity,
)
from deepslim.tasks import Task, get_task, list_tasks
from deepslim.techniques import Technique, get_technique, list_techniques, register_technique, technique_for
from deepslim.train import (
    EncoderKDConfig,
    EvalResult,
    FitResult,
    KDConfig,
    TokenThresholdConfig,
    distill,
    distill_ddp,
    distill_encoder,
    evaluate,
    fidelity,
    fit,
    fit_ddp,
    kept_shares,
    learn_token_thresholds,
)
from deepslim.train.ondevice import (
    CompactMaxPool2d,
    OnDeviceResult,
    PackedDropout,
    bias_only_,
    checkpoint_sequential_,
    efficient_,
    finetune_ondevice,
    plan_sparse_update,
    recalibrate_statistics_,
    sparse_update_,
    tinytl_,
)

__all__ = [
    "ArchiveError", "ArchiveInfo", "AttentionAdapter", "BenchResult", "BinaryConfig", "BlockDropConfig", "Budget",
    "Calibration",
    "ChannelPruneConfig", "CompactMaxPool2d", "CompareResult", "ConfigError", "CostEstimate", "DataBundle",
    "DataError", "DeepSlimError", "DeviceProfile", "DistillStage", "EncodeStage", "EncoderKDConfig", "EnergyTable",
    "EvalResult", "ExportError", "ExportResult", "ExportStage", "FFNAdapter", "FactorizeResult", "Fidelity",
    "FinetuneStage", "FitResult", "Float16Config", "FloatSelection", "FusedInt8Config", "FusedInt8Result",
    "FusedInt8Sensitivity", "GradualPruner", "HeadPruneConfig", "Importance", "InputShapeError", "KDConfig",
    "KMeansConfig", "LatencyTable", "LayerCost", "LayerKind", "LayerProfile", "LinearQuantConfig",
    "MagnitudePruneConfig", "Measurement", "MergeTokensConfig", "ModelLoadError", "NMPruneConfig", "OnDeviceResult",
    "PackedDropout", "Policy", "PowerOfTwoConfig", "Preprocessing", "Profile", "PruneTokensConfig",
    "QuantizationError", "Recipe", "ReportResult", "RunResult", "SVDConfig", "Scope", "SearchResult", "SearchSpace",
    "Sensitivity", "Task", "Technique", "TechniqueStage", "TernaryConfig", "TimeProfile", "TokenThresholdConfig",
    "TrainStage", "TrainingProfile", "TuckerConfig", "UnknownNameError", "UnsupportedModelError",
    "UnsupportedOpError", "archive_info", "bake_masks_", "benchmark", "bias_only_", "check_table",
    "checkpoint_sequential_", "cluster_", "compare", "create_model", "decode", "dependency_groups", "distill",
    "distill_ddp", "distill_encoder", "droppable_blocks", "drop_layers_", "efficient_", "encode", "estimate_cost",
    "evaluate",
    "example_input", "export_fused_int8", "export_onnx", "export_openvino", "factorize_", "fidelity",
    "finetune_ondevice", "fit", "fit_ddp", "fold_batchnorm_", "fused_int8_sensitivity", "get_device", "get_task",
    "get_technique", "interleave", "kept_shares", "learn_token_thresholds", "list_datasets", "list_devices",
    "list_models", "list_tasks", "list_techniques", "load_data", "load_model", "load_recipe", "measure",
    "measure_peak_bytes", "measure_saved_bytes", "merge_tokens_", "plan_channel_pruning", "plan_sparse_update",
    "profile", "prune_", "prune_heads_", "prune_tokens_", "quantization_report", "quantize_",
    "recalibrate_statistics_", "register_attention_adapter", "register_dataset", "register_device",
    "register_layer_kind", "register_model", "register_technique", "run_recipe", "save_model", "search",
    "sensitivity", "sparse_update_", "technique_for", "time_onnx", "tinytl_", "training_profile", "write_report",
]  # fmt: skip
