"""``deepslim fit`` and ``deepslim distill``: training and distillation from the command line (issue 15: ``--nproc``).

Both call the public API: :func:`deepslim.fit` / :func:`deepslim.distill` in this process, or
:func:`deepslim.fit_ddp` / :func:`deepslim.distill_ddp` (``torchrun``, gloo, one thread per process by default) with
``--nproc N`` above 1. ``--batch-size`` is the global batch, split evenly over the processes. The trained model is
written once, by this process (which holds rank 0's weights), atomically.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from torch import nn

from deepslim.cli._common import (
    add_model_args,
    add_threads_arg,
    busy,
    check_output,
    load,
    nonneg_int,
    out,
    parse_options,
    positive_float,
    positive_int,
)

_SUFFIXES = (".pt", ".pth", ".pt2")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the commands' parsers to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
    p = sub.add_parser("fit", help="train a model on a dataset (--nproc N: data-parallel on N processes)")
    _add_training_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("distill", help="distill a teacher into a student model (--nproc N: data-parallel)")
    _add_training_args(p)
    p.add_argument("--teacher", required=True, help="teacher model: zoo name, checkpoint, .pt2, .dsz or "
                   "file.py:factory (loaded for --data)")  # fmt: skip
    p.add_argument("--teacher-weights", help="state dict (.pt) to load into the teacher")
    p.add_argument("--temperature", type=positive_float, help="softening temperature (default: KDConfig's, 4)")
    p.add_argument("--alpha", type=float, help="weight of the teacher's soft targets against the labels, 0 to 1 "
                   "(default: KDConfig's, 0.9)")  # fmt: skip
    p.set_defaults(func=cmd_distill)


def _add_training_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="dataset spec (see `deepslim datasets`)")
    p.add_argument("--epochs", type=nonneg_int, default=3, help="training epochs (default: 3)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="(default: adam)")
    p.add_argument("--batch-size", type=positive_int, help="global training batch (default: the dataset's); "
                   "with --nproc N each process takes batch/N of it")  # fmt: skip
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the initial weights and sample order")
    p.add_argument("--nproc", type=positive_int, default=1, help="data-parallel processes (torchrun, gloo on CPU; "
                   "default: 1, this process)")  # fmt: skip
    add_threads_arg(p)
    p.add_argument("-o", "--output", required=True, help="the trained model (.pt checkpoint, or .pt2 program)")
    p.add_argument("--json", action="store_true", help="print the training history and test accuracy as JSON")


def _setup(args: argparse.Namespace) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Check the output path, then load the data and the model sized for it (seeded: the initial weights)."""
    import torch

    from deepslim.data import load_data

    check_output(args, _SUFFIXES)
    if args.nproc > 1 and args.threads is None:
        args.threads = 1  # one intra-op thread per process: two per process collapse on shared cores
    data_options = {"batch_size": args.batch_size} if args.batch_size is not None else {}
    data = load_data(args.data, **data_options)
    torch.manual_seed(args.seed)
    return load(args, data), data, data_options


def _training(args: argparse.Namespace, data_options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options shared by fit/distill and their data-parallel forms."""
    options: dict[str, Any] = {"epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer, "seed": args.seed,
                               "threads": args.threads}  # fmt: skip
    if args.nproc > 1:
        options.update(nproc=args.nproc, data_options=data_options)
    return options


def cmd_fit(args: argparse.Namespace) -> int:
    from deepslim.train import fit, fit_ddp

    model, data, data_options = _setup(args)
    options = _training(args, data_options)
    with busy(args, f"training on {args.nproc} process{'es' if args.nproc > 1 else ''}"):
        result = fit_ddp(model, args.data, **options) if args.nproc > 1 else fit(model, data, **options)
    return _finish(args, model, data, result)


def cmd_distill(args: argparse.Namespace) -> int:
    from deepslim.pipeline import load_for_data
    from deepslim.train import KDConfig, distill, distill_ddp

    given = {k: getattr(args, k) for k in ("temperature", "alpha") if getattr(args, k) is not None}
    config = KDConfig(**given)  # checked before any work
    model, data, data_options = _setup(args)
    teacher = load_for_data(args.teacher, data, weights=args.teacher_weights, options=parse_options(args.option)
                            if args.teacher == args.model else None)  # fmt: skip
    options = _training(args, data_options)
    with busy(args, f"distilling on {args.nproc} process{'es' if args.nproc > 1 else ''}"):
        if args.nproc > 1:
            result = distill_ddp(model, teacher, args.data, config, **options)
        else:
            result = distill(model, teacher, data, config, **options)
    return _finish(args, model, data, result)


def _finish(args: argparse.Namespace, model: nn.Module, data: Any, result: Any) -> int:
    """Write the model (atomically: save_model), then print the history and the test accuracy."""
    from pathlib import Path

    from deepslim.models import save_model
    from deepslim.train import evaluate

    example = data.example_input if Path(args.output).suffix == ".pt2" else None
    save_model(model, args.output, example_input=example)
    test = evaluate(model, data, threads=args.threads)
    if args.json:
        doc = {"output": args.output, "nproc": args.nproc, "history": result.history, "best_epoch": result.best_epoch,
               "seconds": result.seconds, "test_accuracy": test.accuracy, "test_loss": test.loss}  # fmt: skip
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for row in result.history:
        out.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val accuracy "
                  f"{row.get('val_accuracy', float('nan')):.4f}")  # fmt: skip
    out.print(f"best epoch {result.best_epoch}; test accuracy {test.accuracy:.4f}; {result.seconds:.1f} s training "
              f"on {args.nproc} process{'es' if args.nproc > 1 else ''}")  # fmt: skip
    out.print(f"wrote {args.output}")
    return 0
