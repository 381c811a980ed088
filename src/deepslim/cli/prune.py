"""``deepslim prune``: prune a model, optionally fine-tune it on data, and show before/after measurements."""

from __future__ import annotations

import argparse
import dataclasses
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
from deepslim.cli._technique import add_technique_args, build_config, given, resolve_method
from deepslim.compress.prune import ChannelPruneConfig
from deepslim.errors import ConfigError
from deepslim.techniques import Technique


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (channels for real, or magnitude / N:M masks) and measure it")
    add_model_args(p)
    p.add_argument("--method", default="channel", help="channel (default), magnitude, nm, or a pruning technique "
                   "a --plugin registers")  # fmt: skip
    p.add_argument("--ratio", type=float, help="channel: fraction of channels removed per group (default 0.5)")
    p.add_argument("--sparsity", type=float, help="magnitude: fraction of weights zeroed (default 0.9)")
    p.add_argument("--scope", choices=["layer", "global"], help="magnitude: per layer (default) or global")
    p.add_argument("--importance", choices=["l1", "l2", "bn_scale", "taylor"], help="channel: default l1")
    p.add_argument("--ignore", action="append", default=[], metavar="LAYER", help="layer or re:PATTERN to keep")
    p.add_argument("--round-to", type=int, help="channel: keep multiples of this many channels (default 1)")
    p.add_argument("--nm", help="nm: N:M pattern (default 2:4)")
    add_technique_args(p)
    p.add_argument("--data", help="dataset spec: accuracy before/after, fine-tuning, taylor importance")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--input-shape", help="example input shape (default: the zoo model's or the data's)")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--show-groups", action="store_true", help="channel: print every dependency group")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", help="write the pruned model (.pt, or .pt2 for a torch.export program)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> tuple[Technique, Any]:
    """The pruning technique --method names and its config from the flags that apply to it."""
    technique = resolve_method(args, ["prune"])
    fields = {f.name for f in dataclasses.fields(technique.config)}  # type: ignore[arg-type]
    flags: dict[str, dict[str, Any]] = {}
    for flag, dest in (("--ratio", "ratio"), ("--sparsity", "sparsity"), ("--scope", "scope"),
                       ("--importance", "importance"), ("--round-to", "round_to")):  # fmt: skip
        if given(args, dest):
            flags[flag] = {dest: getattr(args, dest)}
    if given(args, "nm"):
        try:
            n, m = (int(v) for v in args.nm.split(":"))
        except ValueError:
            raise ConfigError(f"--nm expects N:M, e.g. 2:4, got {args.nm!r}") from None
        flags["--nm"] = {"n": n, "m": m}
    if given(args, "ignore"):  # layers kept: the config's own list, or overrides that skip them
        flags["--ignore"] = {"ignore": list(args.ignore)} if "ignore" in fields else \
            {"overrides": {p: None for p in args.ignore}}  # fmt: skip
    if args.show_groups and not issubclass(technique.config, ChannelPruneConfig):
        raise ConfigError(f"--show-groups does not apply to --method {technique.name} (channel pruning only)")
    return technique, build_config(technique, args, flags, {"ratio": 0.5, "sparsity": 0.9})


def run(args: argparse.Namespace) -> int:
    from deepslim.compress.prune import bake_masks_, plan_channel_pruning
    from deepslim.compress.prune.channel import misaligned_layers
    from deepslim.models import save_model
    from deepslim.train import fit

    technique, config = _config(args)
    if args.finetune_epochs and args.data is None:
        raise ConfigError("--finetune-epochs fine-tunes on the training split of --data: give --data too")
    check_output(args, MODEL_SUFFIXES)
    model, x, data = prepare(args)
    latency = not args.no_latency
    before = snapshot(model, x, data, latency)
    if isinstance(config, ChannelPruneConfig) and args.show_groups and not args.json:
        out.print(str(plan_channel_pruning(model, config, x, data.calib if data else None)), markup=False)
    aligned_before = set(misaligned_layers(model))
    technique.apply(model, config, example_input=x, calib_data=data.calib if data is not None else None, data=data)
    newly_misaligned = [n for n in misaligned_layers(model) if n not in aligned_before]
    if data is not None and args.finetune_epochs:
        with busy(args, f"fine-tuning for {args.finetune_epochs} epochs"):
            fit(model, data, epochs=args.finetune_epochs, lr=args.lr)
    bake_masks_(model)
    after = snapshot(model, x, data, latency)
    mask_only = after.params == before.params and after.nonzero_params < before.nonzero_params
    warnings = [MASK_ONLY_WARNING] if mask_only else []
    if newly_misaligned:
        warnings.append(f"{len(newly_misaligned)} layer(s) now have channel counts that are not multiples of 8 "
                        f"(e.g. {', '.join(newly_misaligned[:3])}): CPU kernels run them on slow paths, up to 3x "
                        "slower at the same MACs; try --round-to 16")  # fmt: skip
    if args.output:
        save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps({"method": technique.name, "config": config.to_dict(), "before": snapshot_dict(before),
                          "after": snapshot_dict(after), "warnings": warnings, "output": args.output},
                         indent=2))  # fmt: skip
        return 0
    render(f"{technique.name} pruning of {args.model}", before, after, warnings, args)
    return 0
