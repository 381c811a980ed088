"""The int8 variants of ``transformer_encoder.py``: ONNX Runtime's own transformer optimizer + dynamic int8
(``ort_opt_int8``) and deepslim's fused int8 exports — fp32 feed-forward projections until a cosine floor
(``ds_fused_int8``, ``ds_fused_int8_all``), outlier channels split off with measured-sensitivity fp32 projections
(``ds_mixed_int8`` and its frontier ``ds_split_f0..3``) and LayerNorm-channel splitting (``ds_split_in1/2``).

Every file takes ``input_ids`` only (``IdsOnly``), is exported with the TorchScript exporter and fused by ORT's BERT
optimizer (12 heads, width 384: all-MiniLM-L6-v2). Calibration and check texts are never the evaluation sentences.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from deepslim.export._mixed_int8 import FusedInt8Config
from deepslim.export._torchscript import export_fused_int8, fused_int8_sensitivity
from deepslim.models.hf import IdsOnly

INT8_VARIANTS = ("ort_opt_int8", "ds_fused_int8", "ds_fused_int8_all", "ds_split_in", "ds_mixed_int8")
EMBEDDINGS = ("model.encoder.embeddings",)  # the fused EmbedLayerNormalization: its tables stay fp32


def ort_optimized_int8(fp32: Path, out: Path) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's BERT fusion, then per-channel dynamic int8 (its documented path for transformers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
    fused = opt.get_fused_operator_statistics()
    opt_path = out.with_name(out.stem + "-opt.onnx")
    opt.save_model_to_file(str(opt_path))
    # the fused graph holds com.microsoft operators that ONNX shape inference cannot type: tell the quantizer
    quantize_dynamic(str(opt_path), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": 1})  # onnx.TensorProto.FLOAT
    return out, {k: int(v) for k, v in fused.items() if v}


def fused_int8(teacher: torch.nn.Module, data: ds.DataBundle, work: str, seq: int,
               min_cosine: float) -> tuple[Path, dict]:  # fmt: skip
    """deepslim's own int8: TorchScript export + ORT's fusion + per-channel dynamic int8, fp32 projections added
    (first layer first) until the mean cosine to PyTorch on the test texts reaches ``min_cosine`` (0: all int8,
    which is ORT's own optimizer + quantizer path through deepslim's export)."""
    ids = getattr(data.test.dataset, "ids")  # noqa: B009
    r = export_fused_int8(IdsOnly(teacher), Path(work) / f"ds-int8-{seq}-{min_cosine}.onnx", example_input=(ids[:2],),
                          check_inputs=[(ids[i : i + 32],) for i in range(0, len(ids), 32)], num_heads=12,
                          hidden_size=384, min_cosine=min_cosine)  # fmt: skip
    return r.path, {"fused_ops": r.fused_ops, "float_nodes": list(r.float_nodes), "attempts": r.attempts}


def calib_ids(data: ds.DataBundle, seq: int, passages128: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Inputs the mixed-precision export calibrates and checks on, never the evaluation sentences: every 8th
    training text at sequence 32 (templates and word salad), 64 runs of docstring sentences at 128
    (``passages128()``: the token ids of those runs)."""
    if seq == 32:
        return getattr(data.train.dataset, "ids")[::8][:256]  # noqa: B009
    return passages128()[:64]


def _checks(ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    return [(ids[i : i + 32],) for i in range(0, len(ids), 32)]


def mixed_int8(teacher: torch.nn.Module, ids: torch.Tensor, work: str, seq: int) -> tuple[dict[str, Path], dict]:
    """Session 7: the widest GELU channel of each feed-forward output projection in fp32 (``split_outliers=1``), the
    embeddings' tables fp32, then projections by measured sensitivity until the mean cosine on the calibration
    texts reaches 0.995 (``ds_mixed_int8``); plus the frontier: the same file with the first 0-3 projections of the
    sensitivity order in fp32 (``ds_split_f0`` .. ``ds_split_f3``)."""
    model, checks = IdsOnly(teacher), _checks(ids)

    def build(name: str, config: FusedInt8Config) -> ds.export.FusedInt8Result:
        return export_fused_int8(model, Path(work) / f"{name}-{seq}.onnx", example_input=(ids[:2],),
                                 check_inputs=checks, num_heads=12, hidden_size=384, config=config)  # fmt: skip

    c0 = time.process_time()
    best = build("ds_mixed_int8", FusedInt8Config(float_layers=EMBEDDINGS, split_outliers=1, min_cosine=0.995,
                                                  max_float=5))  # fmt: skip
    info: dict[str, Any] = {"config": best.config.to_dict() if best.config else None, "split": best.split_channels,
                            "attempts": best.attempts, "sensitivity": [r.to_dict() for r in best.sensitivity],
                            "cpu_s": round(time.process_time() - c0, 1)}  # fmt: skip
    files = {"ds_mixed_int8": best.path}
    table = best.sensitivity or fused_int8_sensitivity(model, example_input=(ids[:2],), check_inputs=checks,
                                                       num_heads=12, hidden_size=384,
                                                       config=FusedInt8Config(float_layers=EMBEDDINGS,
                                                                              split_outliers=1))  # fmt: skip
    info["frontier_sensitivity"] = [r.to_dict() for r in table]
    order = [r.layer for r in table if r.gain > 0]
    for n in range(4):
        r = build(f"ds_split_f{n}", FusedInt8Config(float_layers=EMBEDDINGS + tuple(order[:n]), split_outliers=1))
        files[f"ds_split_f{n}"] = r.path
        info[f"ds_split_f{n}"] = {"float_layers": list(EMBEDDINGS + tuple(order[:n])), "check_cosine": r.cosine_mean}
    return files, info


def split_in_int8(teacher: torch.nn.Module, ids: torch.Tensor, work: str, seq: int) -> tuple[dict[str, Path], dict]:
    """No fp32 projections at all: the widest GELU channel split off (``ds_split_f0``), plus the 1 or 2 widest
    LayerNorm-output channels of every feed-forward up projection (``ds_split_in1``, ``ds_split_in2``,
    ``split_inputs``); the embeddings' tables fp32 in all three."""
    model, checks = IdsOnly(teacher), _checks(ids)
    files, info = {}, {}
    for name, k in (("ds_split_f0", 0), ("ds_split_in1", 1), ("ds_split_in2", 2)):
        config = FusedInt8Config(float_layers=EMBEDDINGS, split_outliers=1, split_inputs=k)
        r = export_fused_int8(model, Path(work) / f"{name}-{seq}.onnx", example_input=(ids[:2],), check_inputs=checks,
                              num_heads=12, hidden_size=384, config=config)  # fmt: skip
        files[name] = r.path
        info[name] = {"config": config.to_dict(), "split": r.split_channels, "check_cosine": r.cosine_mean}
    return files, info


def int8_files(chosen: set[str], teacher: torch.nn.Module, data: ds.DataBundle, work: str, seq: int, fp32: Path,
               passages128: Callable[[], torch.Tensor], result: dict[str, Any]) -> dict[str, Path]:  # fmt: skip
    """The chosen int8 variants' files at sequence ``seq`` (``fp32``: the exported fp32 file), their export details
    recorded in ``result`` under ``<variant>_seq<seq>`` (ORT's fused operators under ``ort_fused_ops_seq<seq>``)."""
    files: dict[str, Path] = {}
    if "ort_opt_int8" in chosen:
        files["ort_opt_int8"], result[f"ort_fused_ops_seq{seq}"] = ort_optimized_int8(fp32,
                                                                                      Path(work) / f"int8-{seq}.onnx")
    for name, floor in (("ds_fused_int8", 0.995), ("ds_fused_int8_all", 0.0)):
        if name in chosen:
            files[name], result[f"{name}_seq{seq}"] = fused_int8(teacher, data, work, seq, floor)
    if "ds_split_in" in chosen:
        mixed, result[f"ds_split_in_seq{seq}"] = split_in_int8(teacher, calib_ids(data, seq, passages128), work, seq)
        files |= mixed
    if "ds_mixed_int8" in chosen:
        mixed, result[f"ds_mixed_int8_seq{seq}"] = mixed_int8(teacher, calib_ids(data, seq, passages128), work, seq)
        files |= mixed
    return files
