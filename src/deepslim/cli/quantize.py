"""``deepslim quantize``: quantize a model, calibrate on data, and show accuracy and bytes before and after."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deepslim.cli._common import (
    AUTO_HELP,
    CALIBRATIONS,
    MODEL_SUFFIXES,
    add_model_args,
    busy,
    check_output,
    out,
    prepare,
    render,
    snapshot,
    snapshot_dict,
)
from deepslim.cli._technique import add_technique_args, build_config, given, resolve_method
from deepslim.errors import ConfigError
from deepslim.techniques import Technique


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize weights (and activations) and measure accuracy and bytes")
    add_model_args(p)
    p.add_argument("--method", default="linear", help="linear (default), kmeans, pow2, binary, ternary, fp16, bf16 "
                   "(half precision), or a quantization technique a --plugin registers")  # fmt: skip
    p.add_argument("--bits", type=int, help="weight bits (linear 2-8, kmeans 1-8, pow2 2-8; default 8)")
    p.add_argument("--activation-bits", type=int, help="linear: activation bits (default 8); 0 for weight-only")
    p.add_argument("--calibration", choices=CALIBRATIONS, help=f"linear: default auto ({AUTO_HELP})")
    p.add_argument("--per-tensor", action="store_true", help="linear: one scale per tensor, not per channel")
    p.add_argument("--skip", action="append", default=[], metavar="LAYER", help="layer or re:PATTERN to keep")
    add_technique_args(p)
    p.add_argument("--data", help="dataset spec: calibration and accuracy before/after")
    p.add_argument("--input-shape", help="example input shape (default: the zoo model's or the data's)")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", help="write the quantized model: a .dsz archive (restores the quantized "
                   "layers) or a .pt2 program")  # fmt: skip
    p.set_defaults(func=run)


_HALF = {"fp16": "fp16", "bf16": "bf16"}  # --method fp16 / bf16: the half technique in that dtype


def _config(args: argparse.Namespace) -> tuple[Technique, Any]:
    """The quantization technique --method names and its config from the flags that apply to it."""
    half = _HALF.get(args.method)
    if half is not None:
        args.method = "half"
    technique = resolve_method(args, ["quantize", "cluster"])
    flags: dict[str, dict[str, Any]] = {"--method": {"dtype": half}} if half else {}
    if given(args, "bits"):
        flags["--bits"] = {"bits": args.bits}
    if given(args, "activation_bits"):
        flags["--activation-bits"] = {"activation_bits": args.activation_bits or None}
    if given(args, "calibration"):
        flags["--calibration"] = {"calibration": args.calibration}
    if args.per_tensor:
        flags["--per-tensor"] = {"per_channel": False}
    if given(args, "skip"):
        flags["--skip"] = {"overrides": {p: None for p in args.skip}}
    return technique, build_config(technique, args, flags, {"bits": 8})


def run(args: argparse.Namespace) -> int:
    from deepslim.compress.quantize import quantization_report
    from deepslim.models import save_model

    technique, config = _config(args)
    check_output(args, MODEL_SUFFIXES)
    model, x, data = prepare(args)
    if getattr(config, "activation_bits", None) and data is None:
        raise ConfigError("activation quantization needs calibration data: give --data (or --activation-bits 0)")
    # latency is measured in ONNX Runtime: a linearly quantized model runs there as an integer (QDQ) graph
    latency = not args.no_latency
    before = snapshot(model, x, data, latency)
    with busy(args, "quantizing (calibrating on the data)"):
        technique.apply(model, config, example_input=x, calib_data=data.calib if data is not None else None,
                        data=data)  # fmt: skip
    after = snapshot(model, x, data, latency)
    report = quantization_report(model)
    # a parametrized layer's own container (``conv.parametrizations.weight``) is part of the layer, not a layer
    left = [(n, why) for n, why in report.left if "parametrizations" not in n.split(".")]
    if args.output:
        save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps({"method": technique.name, "config": config.to_dict(), "before": snapshot_dict(before),
                          "after": snapshot_dict(after), "output": args.output,
                          "quantized": [list(r) for r in report.quantized],
                          "not_quantized": [list(r) for r in left]}, indent=2))  # fmt: skip
        return 0
    warnings = [f"not quantized: {n} ({why})" for n, why in left]
    if not report.quantized:
        warnings.insert(0, "no layer was quantized")
    render(f"{args.method} quantization of {args.model}", before, after, warnings, args)
    if report.quantized:
        encodings = sorted({e for _, e in report.quantized})
        out.print(f"quantized {len(report.quantized)} layer(s): {'; '.join(encodings)}")
    return 0
