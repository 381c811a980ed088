"""``deepslim prune``: prune a model, optionally fine-tune it on data, and show before/after measurements."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deepslim.cli._common import (
    MASK_ONLY_WARNING,
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
from deepslim.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (channels for real, or magnitude / N:M masks) and measure it")
    add_model_args(p)
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
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from deepslim.compress.prune import ChannelPruneConfig, bake_masks_, plan_channel_pruning, prune_
    from deepslim.models import save_model
    from deepslim.train import fit

    config = _config(args)
    check_output(args, MODEL_SUFFIXES)
    model, x, data = prepare(args)
    latency = not args.no_latency
    before = snapshot(model, x, data, latency)
    if isinstance(config, ChannelPruneConfig) and args.show_groups and not args.json:
        out.print(str(plan_channel_pruning(model, config, x, data.calib if data else None)), markup=False)
    from deepslim.compress.prune.channel import misaligned_layers

    aligned_before = set(misaligned_layers(model))
    prune_(model, config, example_input=x, calib_data=data.calib if data is not None else None)
    newly_misaligned = [n for n in misaligned_layers(model) if n not in aligned_before]
    if data is not None and args.finetune_epochs:
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
        print(json.dumps({"before": snapshot_dict(before), "after": snapshot_dict(after), "warnings": warnings,
                          "output": args.output}, indent=2))  # fmt: skip
        return 0
    render(f"{args.method} pruning of {args.model}", before, after, warnings, args)
    return 0
