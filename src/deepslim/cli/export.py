"""``deepslim export`` (ONNX, fp32 or integer) and ``deepslim bench`` (measured latency, optionally against another
model, beside the cost model's prediction)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from deepslim.cli._common import (
    AUTO_HELP,
    CALIBRATIONS,
    add_model_args,
    busy,
    check_output,
    out,
    parse_shape,
    positive_float,
    prepare,
    threads_arg,
)
from deepslim.errors import ConfigError
from deepslim.export.bench import FILE_RUNTIMES, RUNTIMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX (fp32, or an integer QDQ graph) with a parity check")
    add_model_args(p)
    p.add_argument("-f", "--format", choices=["onnx"], default="onnx")
    p.add_argument("--int8", action="store_true", help="quantize (u8 activations, s8 per-channel weights) first")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="auto",
                   help=f"--int8: how activations are quantized (default auto: {AUTO_HELP})")  # fmt: skip
    p.add_argument("--data", help="dataset spec: calibration (needed by --int8 and by quantized models)")
    p.add_argument("--input-shape", help="example input shape (default: the zoo model's or the data's)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--min-cosine", type=cosine_arg, metavar="C",
                   help="parity threshold: the least output cosine ONNX Runtime vs PyTorch that writes the file "
                        "(default 0.98, or 0.995 for a dynamic int8 file)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="measure latency in ONNX Runtime or PyTorch (optionally against OTHER)")
    add_model_args(p)
    p.add_argument("--compare", metavar="OTHER", help="a second model, measured interleaved with the first "
                   "(--weights and --arch apply to MODEL only)")  # fmt: skip
    p.add_argument("--runtime", choices=list(RUNTIMES), default="onnxruntime",
                   help="where MODEL runs (openvino: deepslim[openvino]; openvino-bf16: bf16 on CPUs that have it)")
    p.add_argument("--runtime-b", choices=list(FILE_RUNTIMES),
                   help="where OTHER runs with --compare (default: --runtime); OTHER may be MODEL itself")  # fmt: skip
    p.add_argument("--threads", type=threads_arg, metavar="N", help="intra-op threads of the runtime (default: "
                   "all cores, or 1 when the machine's load average is above its core count)")  # fmt: skip
    p.add_argument("--input-shape", help="input shape (default: the zoo model's, or the ONNX file's)")
    p.add_argument("--data", help="dataset spec (input shape, and calibration for quantized models)")
    p.add_argument("--device", default="host", help="device for the predicted latency (default: host)")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="minimum measuring time per model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def _load_any(spec: str, args: argparse.Namespace, *, compared: bool = False) -> tuple[Any, Any, Any]:
    """(module or .onnx path, example input or None, data or None). ``compared``: the --compare model, to which
    --weights and --arch (which describe MODEL) do not apply."""
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise ConfigError(f"model file {spec!r} is a directory, not an ONNX file" if Path(spec).is_dir() else
                              f"model file {spec!r} does not exist")  # fmt: skip
        shape = parse_shape(args.input_shape) if args.input_shape is not None else None
        import torch

        from deepslim.data import load_data

        data = load_data(args.data) if args.data else None
        x = torch.randn(*shape) if shape else data.example_input if data is not None else None
        return spec, x, data
    ns = argparse.Namespace(**{**vars(args), "model": spec, **({"weights": None, "arch": None} if compared else {})})
    return prepare(ns)


def cosine_arg(text: str) -> float:
    """An argparse type: a cosine threshold, a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a cosine in (0, 1], e.g. 0.99; got {text!r}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    import deepslim as ds

    check_output(args, (".onnx",))
    model, x, data = prepare(args)
    calib = data.calib if data is not None else None
    if args.int8:
        if data is None:
            raise ConfigError("--int8 needs --data: activation ranges are calibrated on real inputs")
        with busy(args, "calibrating int8 ranges"):
            ds.quantize_(model, ds.LinearQuantConfig(bits=8, calibration=args.calibration), calib_data=calib)
    with busy(args, f"exporting to {args.output} and checking it in ONNX Runtime"):
        result = ds.export_onnx(model, args.output, example_input=x, calib_data=calib,
                                    min_cosine=args.min_cosine)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    out.print(f"wrote {result.path} ({result.size_bytes:,} B, {result.format}); ONNX Runtime vs PyTorch: max abs "
              f"error {result.max_abs_error:.3g}, top-1 agreement {100 * result.top1_agreement:.1f}%")  # fmt: skip
    if result.quantized_layers:
        out.print(f"{result.integer_layers}/{result.quantized_layers} quantized layers run on integer kernels in "
                  "ONNX Runtime's optimized graph")  # fmt: skip
    for layer in result.float_layers:
        out.print(f"warning: stays in float: {layer}", markup=False)
    for w in result.warnings:
        out.print(f"warning: {w}", markup=False)
    return 0


def _predicted(model: Any, x: Any, device: str, shape: Any) -> float | None:
    from deepslim.analysis import estimate_cost, profile
    from deepslim.errors import DeepSlimError

    if isinstance(model, str) and shape is None and x is not None:
        shape = tuple(x.shape)  # an ONNX file with a free batch dimension is profiled at the measured input's shape
    try:
        prof = profile(model, x, input_shape=shape) if isinstance(model, str) else profile(model, x)
    except DeepSlimError:
        return None
    return estimate_cost(prof, device).latency_ms


def cmd_bench(args: argparse.Namespace) -> int:
    import deepslim as ds

    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    threads = args.threads or getattr(args, "global_threads", None)
    a, xa, data = _load_any(args.model, args)
    calib = data.calib if data is not None else None
    ds.get_device(args.device)
    rows: list[tuple[str, Any, float | None]] = []
    if args.runtime_b and not args.compare:
        raise ConfigError("--runtime-b is the runtime of --compare OTHER; give --compare (it may name MODEL again)")
    if args.compare:
        if args.runtime not in FILE_RUNTIMES:
            raise ConfigError(f"--compare runs each model in a runtime process: --runtime one of "
                              f"{', '.join(FILE_RUNTIMES)}")  # fmt: skip
        b, xb, _ = _load_any(args.compare, args, compared=True)
        x = xa if xa is not None else xb
        with busy(args, "measuring both models, interleaved"):
            result = ds.compare(a, b, example_input=x, input_shape=shape, threads=threads, calib_data=calib,
                                runtime=args.runtime, runtime_b=args.runtime_b)  # fmt: skip
        for name, model, r in ((args.model, a, result.a), (args.compare, b, result.b)):
            label = f"{name} ({r.runtime})" if result.a.runtime != result.b.runtime else name
            rows.append((label, r, _predicted(model, x, args.device, shape)))
    else:
        with busy(args, f"measuring in {args.runtime}"):
            r = ds.benchmark(a, runtime=args.runtime, example_input=xa, input_shape=shape, threads=threads,
                             min_seconds=args.seconds, calib_data=calib)  # fmt: skip
        rows.append((args.model, r, _predicted(a, xa, args.device, shape)))
    if args.json:
        doc = {"models": [{"model": n, **r.to_dict(), "predicted_ms": p, "device": args.device}
                          for n, r, p in rows]}  # fmt: skip
        if args.compare:
            doc["speedup"] = rows[0][1].median_ms / rows[1][1].median_ms
        print(json.dumps(doc, indent=2))
        return 0
    runtimes = " vs ".join(dict.fromkeys(r.runtime for _, r, _ in rows))
    table = Table("model", "median ms", "p10", "p90", "runs/s", "peak memory", f"predicted ({args.device})",
                  title=f"latency, {runtimes}" + (", interleaved" if args.compare else ""))  # fmt: skip
    for name, r, pred in rows:
        mem = f"{r.peak_memory_bytes / 2**20:.1f} MiB" if r.peak_memory_bytes is not None else "n/a"
        table.add_row(name, f"{r.median_ms:.3f}", f"{r.p10_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput_per_s:.1f}",
                      mem, f"{pred:.3f} ms" if pred is not None else "n/a")  # fmt: skip
    out.print(table)
    if args.compare:
        out.print(f"{rows[1][0]} runs {rows[0][1].median_ms / rows[1][1].median_ms:.2f}x as fast as {rows[0][0]}")
    for name, r, _ in rows:
        for w in r.warnings:
            out.print(f"warning ({name}): {w}", markup=False)
    return 0
