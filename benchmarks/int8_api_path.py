"""The documented int8 path against ONNX Runtime's own quantizer, on ResNet-18 at 224×224, batch 1.

deepslim: ``quantize_(model, LinearQuantConfig(bits=8), calib_data=calib)`` then
``export_onnx(model, path, example_input=x)`` — exactly as README/DESIGN show it, no second data argument.
Peer: ``onnxruntime.quantization.quantize_static`` (QDQ, u8 activations, s8 per-channel weights, MinMax) on
deepslim's fp32 export, with the same 32 calibration images. Both files (and the fp32 one) are timed round-robin
with ``deepslim.interleave`` (each in its own process, spinning off, order reversed every round). Also recorded: how
many layers each file runs on integer kernels in ONNX Runtime's optimized graph, the outputs' agreement with the
float model, and the load average before and after (the machine is shared; a load above 2 makes the numbers noisy).

    python benchmarks/int8_api_path.py [--json benchmarks/results/int8_api_path.json] [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import deepslim as ds
from _common import result_header, write_result
from _peers import ort_quantize_static

THREADS = 2
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "ConvInteger")


def optimized_ops(path: Path, tmp: Path) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp / f"{path.stem}-optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops: dict[str, int] = {}
    for node in onnx.load(opts.optimized_model_filepath).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def agreement(path: Path, model: torch.nn.Module, xs: torch.Tensor) -> dict[str, float]:
    from deepslim.export.onnx import ort_session

    sess = ort_session(path, threads=THREADS)
    got = sess.run(None, {sess.get_inputs()[0].name: xs.numpy()})[0]
    with torch.no_grad():
        ref = model(xs).numpy()
    cos = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    return {"cosine_vs_float": cos, "top1_vs_float": float((got.argmax(1) == ref.argmax(1)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    out = result_header("int8_api_path", THREADS)
    out["load_average_before"] = os.getloadavg()
    torch.manual_seed(0)
    model = ds.create_model("resnet18").eval()
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=gen),) for _ in range(4)]
    x = torch.randn(1, 3, 224, 224, generator=gen)
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work)
        fp32 = ds.export_onnx(model, tmp / "fp32.onnx", example_input=x).path
        q = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(bits=8), calib_data=calib)
        res = ds.export_onnx(q, tmp / "deepslim-int8.onnx", example_input=x)  # the documented path
        peer = ort_quantize_static(fp32, tmp / "ort-int8.onnx", [b[0].numpy() for b in calib])
        files = {"ORT fp32": fp32, "deepslim int8 (documented path)": res.path, "ORT quantize_static int8": peer}
        xs = torch.randn(16, 3, 224, 224, generator=gen)
        out["files"] = {}
        for label, path in files.items():
            ops = optimized_ops(Path(path), tmp)
            out["files"][label] = {"size_bytes": Path(path).stat().st_size, "integer_kernels": sum(
                ops.get(k, 0) for k in INTEGER_KERNELS), "qlinear_add": ops.get("QLinearAdd", 0),
                **agreement(Path(path), model, xs)}  # fmt: skip
        out["export_result"] = {k: v for k, v in res.to_dict().items() if k != "path"}
        timed = ds.interleave(files, example_input=x, threads=THREADS, rounds=args.rounds)
    for label, r in timed.items():
        out["files"][label].update(median_ms=r.median_ms, p10_ms=r.p10_ms, p90_ms=r.p90_ms, runs=r.runs)
    ours, theirs = timed["deepslim int8 (documented path)"], timed["ORT quantize_static int8"]
    out["ratio_deepslim_over_quantize_static"] = ours.median_ms / theirs.median_ms
    write_result(out, args.json)


if __name__ == "__main__":
    main()
