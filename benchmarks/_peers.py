"""The peers deepslim is measured against, driven the way their documentation shows: ONNX Runtime's
``quantize_static``, NNCF's ``quantize`` (ONNX backend) and Torch-Pruning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import numpy as np
import torch


def ort_quantize_static(fp32: Path, dest: Path, calib: list[np.ndarray], method: str = "MinMax") -> Path:
    """ONNX Runtime's own int8 PTQ in its fast CPU form: QDQ, u8 activations, s8 per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dest.with_name(dest.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": b[i : i + 1]} for b in calib for i in range(len(b))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))  # fmt: skip
    return dest


def nncf_onnx(fp32: Path, dest: Path, calib: list[np.ndarray]) -> Path:
    """NNCF's default int8 PTQ on the ONNX model (its ONNX backend writes a QDQ graph for ONNX Runtime)."""
    import nncf
    import onnx

    samples = [{"input": b[i : i + 1]} for b in calib for i in range(len(b))]
    quantized = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(dest))
    return dest


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    """Torch-Pruning's MetaPruner with group L1 magnitude importance, the classifier kept."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = model.fc if hasattr(model, "fc") else cast(torch.nn.Sequential, model.classifier)[-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[head])  # fmt: skip
    pruner.step()
    return model


def ort_accuracy(path: Path, loader, threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX classifier (batch-1 graph) in ONNX Runtime over ``loader``, in a session of
    ``threads`` intra-op threads (None: ONNX Runtime's default, every core — pass the benchmark's ``--threads``)."""
    from deepslim.export.onnx import ort_session

    sess = ort_session(path, threads=threads)
    correct = total = 0
    for x, y in loader:
        for i in range(len(x)):
            out = sess.run(None, {"input": x[i : i + 1].numpy()})[0]
            correct += int(np.argmax(out) == int(y[i]))
            total += 1
    return correct / total
