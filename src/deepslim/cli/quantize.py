"""``deepslim quantize``: quantize a model, calibrate on data, and show accuracy and bytes before and after."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deepslim.cli._common import (
    MODEL_SUFFIXES,
    add_model_args,
    busy,
    check_output,
    prepare,
    render,
    snapshot,
    snapshot_dict,
)
from deepslim.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize weights (and activations) and measure accuracy and bytes")
    add_model_args(p)
    p.add_argument("--method", choices=["linear", "kmeans", "pow2", "binary", "ternary", "fp16", "bf16"],
                   default="linear")  # fmt: skip
    p.add_argument("--bits", type=int, default=8, help="weight bits (linear 2-8, kmeans 1-8, pow2 2-8)")
    p.add_argument("--activation-bits", type=int, default=8, help="linear: activation bits; 0 for weight-only")
    p.add_argument("--calibration", choices=["minmax", "percentile", "mse", "entropy"], default="minmax")
    p.add_argument("--per-tensor", action="store_true", help="linear: one scale per tensor, not per channel")
    p.add_argument("--skip", action="append", default=[], metavar="LAYER", help="layer or re:PATTERN to keep")
    p.add_argument("--data", help="dataset spec: calibration and accuracy before/after")
    p.add_argument("--input-shape", help="example input shape (default: the zoo model's or the data's)")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", help="write the quantized model: a .dsz archive (restores the quantized "
                   "layers) or a .pt2 program")  # fmt: skip
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from deepslim.compress import quantize as q

    skip = {p: None for p in args.skip}
    if args.method == "linear":
        return q.LinearQuantConfig(bits=args.bits, activation_bits=args.activation_bits or None,
                                   calibration=args.calibration, per_channel=not args.per_tensor,
                                   overrides=skip)  # fmt: skip
    if args.method == "kmeans":
        return q.KMeansConfig(bits=args.bits, overrides=skip)
    if args.method == "pow2":
        return q.PowerOfTwoConfig(bits=args.bits, overrides=skip)
    if args.method in ("fp16", "bf16"):
        return q.Float16Config(dtype=args.method, overrides=skip)
    return q.BinaryConfig(overrides=skip) if args.method == "binary" else q.TernaryConfig(overrides=skip)


def run(args: argparse.Namespace) -> int:
    from deepslim.compress.quantize import KMeansConfig, cluster_, quantization_report, quantize_
    from deepslim.models import save_model

    config = _config(args)
    check_output(args, MODEL_SUFFIXES)
    model, x, data = prepare(args)
    if getattr(config, "activation_bits", None) and data is None:
        raise ConfigError("activation quantization needs calibration data: give --data (or --activation-bits 0)")
    # latency is measured in ONNX Runtime: a linearly quantized model runs there as an integer (QDQ) graph
    latency = not args.no_latency
    before = snapshot(model, x, data, latency)
    with busy(args, "quantizing (calibrating on the data)"):
        if isinstance(config, KMeansConfig):
            cluster_(model, config)
        else:
            quantize_(model, config, calib_data=data.calib if data is not None else None)
    after = snapshot(model, x, data, latency)
    report = quantization_report(model)
    if args.output:
        save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps({"before": snapshot_dict(before), "after": snapshot_dict(after), "output": args.output,
                          "quantized": [list(r) for r in report.quantized],
                          "not_quantized": [list(r) for r in report.left]}, indent=2))  # fmt: skip
        return 0
    warnings = [f"not quantized: {n} ({why})" for n, why in report.left]
    render(f"{args.method} quantization of {args.model}", before, after, warnings, args)
    return 0
