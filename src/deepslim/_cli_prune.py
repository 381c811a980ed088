"""``deepslim prune``: prune a model, optionally fine-tune it on data, and show before/after measurements."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepslim.errors import ConfigError, DeepSlimError

MASK_ONLY_WARNING = ("mask-only sparsity: dense runtimes (PyTorch, ONNX Runtime on CPU) still compute every zero, so "
                     "expect no latency gain; the gain is in compressed size on disk")  # fmt: skip


@dataclass
class Snapshot:
    params: int
    nonzero_params: int
    weight_bytes: int
    macs: int
    latency_ms: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def add_parser(sub: argparse._SubParsersAction, model_args: Any) -> None:
    p = sub.add_parser("prune", help="prune a model (channels for real, or magnitude / N:M masks) and measure it")
    model_args(p)
    p.add_argument("--method", choices=["channel", "magnitude", "nm"], default="channel")
    p.add_argument("--ratio", type=float, default=0.5, help="channel: fraction of channels removed per group")
    p.add_argument("--sparsity", type=float, default=0.9, help="magnitude: fraction of weights zeroed")
    p.add_argument("--scope", choices=["layer", "global"], default="layer", help="magnitude: per layer or global")
    p.add_argument("--importance", choices=["l1", "l2", "bn_scale", "taylor"], default="l1")
    p.add_argument("--ignore", action="append", default=[], metavar="LAYER", help="layer or re:PATTERN to keep")
    p.add_argument("--round-to", type=int, default=1, help="channel: keep multiples of this many channels")
    p.add_argument("--nm", default="2:4", help="nm: N:M pattern")
    p.add_argument("--data", help="dataset spec: accuracy before/after, fine-tuning, taylor importance")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--input-shape", help="example input shape (default: the zoo model's or the data's)")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--show-groups", action="store_true", help="channel: print every dependency group")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", help="write the pruned model (.pt, or .pt2 for a torch.export program)")


def _config(args: argparse.Namespace) -> Any:
    from deepslim.compress.prune import ChannelPruneConfig, MagnitudePruneConfig, NMPruneConfig

    if args.method == "channel":
        return ChannelPruneConfig(ratio=args.ratio, importance=args.importance, ignore=tuple(args.ignore),
                                  round_to=args.round_to)  # fmt: skip
    ignore = {p: None for p in args.ignore}
    if args.method == "magnitude":
        return MagnitudePruneConfig(sparsity=args.sparsity, scope=args.scope, overrides=ignore)
    try:
        n, m = (int(v) for v in args.nm.split(":"))
    except ValueError:
        raise ConfigError(f"--nm expects N:M, e.g. 2:4, got {args.nm!r}") from None
    return NMPruneConfig(n=n, m=m, overrides=ignore)


def snapshot(model: nn.Module, x: torch.Tensor, data: Any, latency: bool) -> Snapshot:
    from deepslim.analysis import profile
    from deepslim.export import benchmark
    from deepslim.train import evaluate

    prof = profile(model, x)
    ms = None
    if latency:
        try:
            calib = data.calib if data is not None else None  # a quantized model exports as an integer graph
            ms = benchmark(model, runtime="onnxruntime", example_input=x, min_seconds=0.5, calib_data=calib).median_ms
        except DeepSlimError as exc:  # a model ONNX cannot take is still pruned; its latency is just not shown
            ms = None
            import logging

            logging.getLogger(__name__).warning("latency not measured: %s", exc)
    acc = evaluate(model, data.test).accuracy if data is not None else None
    return Snapshot(prof.params, prof.nonzero_params, prof.weight_bytes, prof.macs, ms, acc)


def prepare(args: argparse.Namespace, load: Any, parse_shape: Any) -> tuple[nn.Module, torch.Tensor, Any]:
    """The model (sized for the data when it is a zoo architecture, and carrying the data's preprocessing), its
    example input, and the data (or None)."""
    from deepslim.data import load_data

    data = load_data(args.data) if args.data else None
    model = load(args, data)
    if args.input_shape:
        x = torch.randn(*parse_shape(args.input_shape))
    elif data is not None:
        x = data.example_input
    else:
        x = default_input(model)
    if x is None:
        raise ConfigError(f"{args.model} is not a zoo model, so its input shape is unknown: give --input-shape "
                          "(e.g. 1,3,32,32) or --data")  # fmt: skip
    return model, x, data


MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".dsz")


def check_output(args: argparse.Namespace, suffixes: tuple[str, ...]) -> None:
    """Refuse an ``-o`` path of a kind the command does not write, before any work is done."""
    from pathlib import Path

    path = getattr(args, "output", None)
    if path is None or Path(path).suffix in suffixes:
        return
    hint = "; deepslim export writes ONNX" if Path(path).suffix == ".onnx" else ""
    raise ConfigError(f"deepslim {args.command} -o writes {', '.join(suffixes)} files, got {path!r}: name the "
                      f"output with one of these suffixes{hint}")  # fmt: skip


def default_input(model: nn.Module) -> torch.Tensor | None:
    """The example input of a zoo architecture, or one like the input its file recorded; None when unknown."""
    from deepslim.models import example_input, list_models
    from deepslim.models._registry import ARCH_ATTR

    arch = getattr(model, ARCH_ATTR, None)
    if isinstance(arch, dict) and arch.get("name") in list_models():
        return example_input(arch["name"], **arch.get("options", {}))
    return recorded_input(model)


def recorded_input(model: nn.Module) -> torch.Tensor | None:
    """An input like the one the model's file recorded (shape and dtype), or None when it recorded none."""
    from deepslim.models import _registry

    record = getattr(model, getattr(_registry, "INPUT_ATTR", "_deepslim_input"), None)
    if not isinstance(record, dict) or "shape" not in record:
        return None
    dtype = getattr(torch, str(record.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        return None
    shape = tuple(int(d) for d in record["shape"])
    return torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)


def run(args: argparse.Namespace, load: Any, parse_shape: Any, out: Any) -> int:
    from deepslim.compress.prune import ChannelPruneConfig, bake_masks_, plan_channel_pruning, prune_
    from deepslim.models import save_model
    from deepslim.train import fit

    config = _config(args)
    check_output(args, MODEL_SUFFIXES)
    model, x, data = prepare(args, load, parse_shape)
    latency = not args.no_latency
    before = snapshot(model, x, data, latency)
    if isinstance(config, ChannelPruneConfig) and args.show_groups and not args.json:
        out.print(str(plan_channel_pruning(model, config, x, data.calib if data else None)), markup=False)
    from deepslim.compress.prune.channel import misaligned_layers

    aligned_before = set(misaligned_layers(model))
    prune_(model, config, example_input=x, calib_data=data.calib if data is not None else None)
    newly_misaligned = [n for n in misaligned_layers(model) if n not in aligned_before]
    if data is not None and args.finetune_epochs:
        from deepslim._cli_export import busy

        with busy(args, f"fine-tuning for {args.finetune_epochs} epochs"):
            fit(model, data, epochs=args.finetune_epochs, lr=args.lr)
    bake_masks_(model)
    after = snapshot(model, x, data, latency)
    warnings = [] if isinstance(config, ChannelPruneConfig) else [MASK_ONLY_WARNING]
    if newly_misaligned:
        warnings.append(f"{len(newly_misaligned)} layer(s) now have channel counts that are not multiples of 8 "
                        f"(e.g. {', '.join(newly_misaligned[:3])}): CPU kernels run them on slow paths, up to 3x "
                        "slower at the same MACs; try --round-to 16")  # fmt: skip
    if args.output:
        save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps({"before": before.to_dict(), "after": after.to_dict(), "warnings": warnings,
                          "output": args.output}, indent=2))  # fmt: skip
        return 0
    render(out, f"{args.method} pruning of {args.model}", before, after, warnings, args)
    return 0


def render(out: Any, title: str, before: Snapshot, after: Snapshot, warnings: list[str],
           args: argparse.Namespace) -> None:  # fmt: skip
    from rich.table import Table

    from deepslim.analysis._format import human

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    table = Table("", "before", "after", "before / after", title=title)
    table.add_row("parameters", f"{before.params:,}", f"{after.params:,}", ratio(before.params, after.params))
    table.add_row("nonzero parameters", f"{before.nonzero_params:,}", f"{after.nonzero_params:,}",
                  ratio(before.nonzero_params, after.nonzero_params))  # fmt: skip
    table.add_row("weight bytes", human(before.weight_bytes, "B"), human(after.weight_bytes, "B"),
                  ratio(before.weight_bytes, after.weight_bytes))  # fmt: skip
    table.add_row("MACs", f"{before.macs:,}", f"{after.macs:,}", ratio(before.macs, after.macs))
    if before.latency_ms is not None and after.latency_ms is not None:
        table.add_row("latency, ONNX Runtime (ms)", f"{before.latency_ms:.3f}", f"{after.latency_ms:.3f}",
                      ratio(before.latency_ms, after.latency_ms))  # fmt: skip
    if before.accuracy is not None:
        label = f"test accuracy{' (after fine-tuning)' if getattr(args, 'finetune_epochs', 0) else ''}"
        table.add_row(label, f"{100 * before.accuracy:.2f} %", f"{100 * after.accuracy:.2f} %",
                      f"{100 * (after.accuracy - before.accuracy):+.2f} pp")  # fmt: skip
    out.print(table)
    for w in warnings:
        out.print(f"warning: {w}")
    if args.output:
        out.print(f"wrote {args.output}")
