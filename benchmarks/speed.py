"""Speed, side by side in one run: what each way of serving ResNet-18 and MobileNetV2 costs on this CPU.

224×224, batch 1, 2 threads. Variants: PyTorch eager fp32; ONNX Runtime fp32; deepslim int8 (LinearQuantConfig PTQ
exported as a QDQ graph); ONNX Runtime's own ``quantize_static`` (QDQ, u8 activations, s8 per-channel weights);
NNCF's int8 PTQ (ONNX backend) run in ONNX Runtime; deepslim channel pruning (ratio 0.5, round_to 16) + int8;
Torch-Pruning at channel ratio 0.5 + ONNX Runtime int8 (the same MACs). Weights are random (speed does not depend on
them; accuracy is measured on trained models in benchmarks/quantization_shapes.py); the 32 calibration images are
random too, the same for every quantizer.

All ONNX variants are timed in one round-robin (deepslim.interleave): each in its own process with intra-op
spinning off, blocks of 5 runs in turn, the order reversed every round — so the machine's drift hits all alike.
Also: the cost model's host prediction beside the measurement, and the trap of
alternating two spinning ONNX Runtime sessions in one process.

    python benchmarks/speed.py [--json OUT] [--seconds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

import deepslim as ds
from _common import result_header, write_result
from _peers import nncf_onnx, ort_quantize_static, tp_prune

THREADS = 2


def variants(name: str, tmp: Path) -> tuple[dict[str, Path], dict[str, torch.nn.Module], dict[str, int]]:
    torch.manual_seed(0)
    model = ds.create_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=gen),) for _ in range(4)]
    calib_np = [b[0].numpy() for b in calib]
    files, modules, macs = {}, {"eager fp32": model}, {}
    files["ORT fp32"] = ds.export_onnx(model, tmp / f"{name}-fp32.onnx", example_input=x).path
    q = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(bits=8), calib_data=calib)
    files["deepslim int8"] = ds.export_onnx(q, tmp / f"{name}-ds-int8.onnx", example_input=x, calib_data=calib).path
    modules["deepslim int8"] = q
    files["ORT quantize_static int8"] = ort_quantize_static(files["ORT fp32"], tmp / f"{name}-ort-int8.onnx", calib_np)
    files["NNCF int8"] = nncf_onnx(files["ORT fp32"], tmp / f"{name}-nncf-int8.onnx", calib_np)
    pruned = ds.prune_(copy.deepcopy(model), ds.ChannelPruneConfig(ratio=0.5, round_to=16), example_input=x)
    pq = ds.quantize_(copy.deepcopy(pruned), ds.LinearQuantConfig(bits=8), calib_data=calib)
    files["deepslim pruned + int8"] = ds.export_onnx(pq, tmp / f"{name}-ds-pruned-int8.onnx", example_input=x,
                                                     calib_data=calib).path  # fmt: skip
    tp = tp_prune(model, x, 0.5).eval()
    tp_fp32 = ds.export_onnx(tp, tmp / f"{name}-tp-fp32.onnx", example_input=x).path
    files["Torch-Pruning + ORT int8"] = ort_quantize_static(tp_fp32, tmp / f"{name}-tp-int8.onnx", calib_np)
    for key, m in (("dense", model), ("deepslim pruned", pruned), ("Torch-Pruning", tp)):
        macs[key] = ds.profile(m, x).macs
    return files, modules, macs


def spinning_trap(a: Path, b: Path, seconds: float) -> dict:
    """Two ONNX Runtime sessions in one process, called alternately, spinning on (the default) vs off."""
    from deepslim.export.bench import time_calls
    from deepslim.export.onnx import ort_session

    x = {"input": torch.randn(1, 3, 224, 224).numpy()}
    out = {}
    solo = ort_session(a, threads=THREADS)
    out["solo_ms"] = statistics.median(time_calls(lambda: solo.run(None, x), min_seconds=seconds))
    solo = None  # released before the pair is created
    for spinning in (True, False):
        sa, sb = ort_session(a, threads=THREADS, spinning=spinning), ort_session(b, threads=THREADS, spinning=spinning)
        ta: list[float] = []
        for _ in range(30):
            ta += time_calls(lambda s=sa: s.run(None, x), warmup=0, min_runs=1, max_runs=1, min_seconds=0)
            sb.run(None, x)
        out[f"alternated_spinning_{'on' if spinning else 'off'}_ms"] = statistics.median(ta[5:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0, help="eager PyTorch measuring time")
    parser.add_argument("--rounds", type=int, default=40, help="round-robin rounds of 5 runs per ONNX variant")
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    args = parser.parse_args()
    result: dict = {**result_header("speed"), "models": {}}
    from deepslim.analysis.calibrate import host_device

    host = host_device()  # calibrated first, while this process runs nothing else
    result["host"] = {"peak_macs_per_s": dict(host.peak_macs_per_s), "depthwise_efficiency":
                      dict(host.depthwise_efficiency), "mem_bandwidth_bytes_per_s": host.mem_bandwidth_bytes_per_s,
                      "onchip_bandwidth_bytes_per_s": host.onchip_bandwidth_bytes_per_s}  # fmt: skip
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work)
        for name in args.models.split(","):
            files, modules, macs = variants(name, tmp)
            rows = {"eager fp32": ds.benchmark(modules["eager fp32"], runtime="torch", example_input=x,
                                               threads=THREADS, min_seconds=args.seconds).to_dict()}  # fmt: skip
            failed = {}
            for label, path in list(files.items()):
                try:  # a peer's file that ONNX Runtime cannot run is a finding
                    ds.benchmark(path, threads=THREADS, min_seconds=0.1)
                except ds.DeepSlimError as exc:
                    failed[label] = str(exc)
                    files.pop(label)
            # every ONNX variant in one round-robin, each in its own process: drift hits all alike
            measured_rows = ds.interleave(files, threads=THREADS, rounds=args.rounds, block=5)
            for label, r in measured_rows.items():
                rows[label] = {**r.to_dict(), "file_bytes": Path(files[label]).stat().st_size}
            base = rows["ORT fp32"]["median_ms"]
            for r in rows.values():
                r["speedup_vs_ort_fp32"] = base / r["median_ms"]
            pairs = {"deepslim int8 vs ORT quantize_static": ("ORT quantize_static int8", "deepslim int8"),
                     "deepslim int8 vs NNCF": ("NNCF int8", "deepslim int8"),
                     "deepslim pruned+int8 vs Torch-Pruning+ORT int8": ("Torch-Pruning + ORT int8",
                                                                        "deepslim pruned + int8")}  # fmt: skip
            heads = {k: rows[a]["median_ms"] / rows[b]["median_ms"] for k, (a, b) in pairs.items()
                     if a in rows and b in rows}  # fmt: skip
            prof_fp32 = ds.profile(modules["eager fp32"], x)
            prof_int8 = ds.profile(modules["deepslim int8"], x)
            predicted = {"fp32": ds.estimate_cost(prof_fp32, "host").latency_ms,
                         "int8": ds.estimate_cost(prof_int8, "host").latency_ms}  # fmt: skip
            # the cost model predicts the runtime as users run it: alone, with ONNX Runtime's defaults (spinning on)
            measured = {k: ds.benchmark(files[f], threads=THREADS, min_seconds=args.seconds).median_ms
                        for k, f in (("fp32", "ORT fp32"), ("int8", "deepslim int8"))}  # fmt: skip
            result["models"][name] = {
                "macs": macs, "rows": rows,
                "deepslim_speedup_over_peer": heads,
                "host_prediction": {k: {"predicted_ms": predicted[k], "measured_ms": measured[k],
                                        "error": predicted[k] / measured[k] - 1} for k in predicted},
                "spinning_trap": spinning_trap(files["ORT fp32"], files["deepslim int8"], args.seconds),
                "failed": failed,
            }  # fmt: skip
            print(f"== {name} (MACs dense {macs['dense']:,}, deepslim pruned {macs['deepslim pruned']:,}, "
                  f"Torch-Pruning {macs['Torch-Pruning']:,})")  # fmt: skip
            for label, r in rows.items():
                size = f"{r['file_bytes']:>11,} B" if "file_bytes" in r else " " * 13
                print(f"  {label:<28} {r['median_ms']:8.2f} ms  {r['speedup_vs_ort_fp32']:5.2f}x  {size}")
            for label, why in failed.items():
                print(f"  {label:<28} FAILED: {why}")
            for label, v in heads.items():
                print(f"  {label}: deepslim {v:.2f}x as fast")
            for k, v in result["models"][name]["host_prediction"].items():
                print(f"  host cost model {k}: predicted {v['predicted_ms']:.2f} ms, measured {v['measured_ms']:.2f} "
                      f"ms ({100 * v['error']:+.0f}%)")  # fmt: skip
            print(f"  spinning trap: {result['models'][name]['spinning_trap']}", flush=True)
    write_result(result, args.json, echo=False)


if __name__ == "__main__":
    main()
