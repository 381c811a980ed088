"""``deepslim finetune-ondevice``: fine-tune under a memory budget (issue 16), predicted and measured memory side by
side with accuracy."""

from __future__ import annotations

import argparse
import json
import re

from deepslim.cli._common import add_model_args, busy, load, out
from deepslim.errors import ConfigError

_UNITS = {"": 1, "B": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command's parser to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
    p = sub.add_parser("finetune-ondevice", help="fine-tune under a memory budget (TinyTL, sparse, bias, full): "
                                                 "predicted and measured memory with accuracy")  # fmt: skip
    add_model_args(p)
    p.add_argument("--data", required=True, help="dataset to adapt to (see `deepslim datasets`)")
    p.add_argument("--mode", choices=("tinytl", "sparse", "bias", "full"), default="tinytl",
                   help="what trains and how (default: tinytl)")  # fmt: skip
    p.add_argument("--budget", help="memory=XMB: the most a training step may hold at its peak (KB, MB, GB = 2^10, "
                                    "2^20, 2^30 bytes); required by --mode sparse")  # fmt: skip
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimizer (default: adam)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (default: 8)")
    p.add_argument("--out", help="write the fine-tuned model here (.pt2: a torch.export program)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_finetune)


def parse_budget(text: str) -> int:
    """``memory=2.5MB`` (or ``memory=300KB``, ``memory=1048576``) as bytes."""
    key, _, value = text.partition("=")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if key.strip() != "memory" or match is None or match.group(2).upper() not in _UNITS:
        raise ConfigError(f"--budget expects memory=SIZE with a unit of B, KB, MB or GB (e.g. memory=2MB), "
                          f"got {text!r}")
    nbytes = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if nbytes < 1:
        raise ConfigError(f"--budget must be positive, got {text!r}")
    return nbytes


def _mb(n: int) -> str:
    return f"{n / 2**20:.3f} MB"


def cmd_finetune(args: argparse.Namespace) -> int:
    from deepslim.data import load_data
    from deepslim.models import save_model
    from deepslim.train.ondevice import finetune_ondevice

    budget = parse_budget(args.budget) if args.budget else None
    if args.batch_size < 1 or args.epochs < 0:
        raise ConfigError("--batch-size must be at least 1 and --epochs at least 0")
    if args.out and not args.out.endswith(".pt2"):
        raise ConfigError(f"--out writes a torch.export program (.pt2), got {args.out!r}")
    data = load_data(args.data, batch_size=args.batch_size)
    model = load(args, data)
    with busy(args, f"fine-tuning ({args.mode})"):
        res = finetune_ondevice(model, data, mode=args.mode, budget_bytes=budget, epochs=args.epochs, lr=args.lr,
                                optimizer=args.optimizer, batch_size=args.batch_size)  # fmt: skip
    if args.out:
        save_model(model, args.out, example_input=data.example_input)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    for note in res.notes:
        out.print(note)
    if res.stock_layers:
        total = sum(res.stock_layers.values())
        out.print(f"no memory-efficient form, trained the stock way (keeping {_mb(total)} for backward): "
                  + ", ".join(f"{n} {_mb(b)}" for n, b in res.stock_layers.items()))  # fmt: skip
    out.print(f"{'':<22}{'predicted':>14}{'measured':>14}")
    out.print(f"{'saved activations':<22}{_mb(res.predicted_saved_bytes):>14}{_mb(res.measured_saved_bytes):>14}")
    out.print(f"{'peak of a step':<22}{_mb(res.predicted_peak_bytes):>14}{_mb(res.measured_peak_bytes):>14}")
    budget_text = f", budget {_mb(budget)}" if budget is not None else ""
    out.print(f"{args.mode}, batch {res.batch_size}{budget_text}: {res.trainable_params:,} trainable parameters; "
              f"accuracy {res.accuracy_before:.2%} -> {res.accuracy_after:.2%} after {res.epochs} epochs "
              f"({res.seconds:.1f} s)")  # fmt: skip
    return 0
