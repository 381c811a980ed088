"""Dense training to convergence for the search benchmark (issue 14): SGD + one-cycle, light augmentation.

``ds.fit`` trains without augmentation and with Adam; the search's comparison needs dense models trained to
convergence on the full Fashion-MNIST, so this loop adds what that takes: SGD with Nesterov momentum, weight decay,
a one-cycle schedule (linear warm-up for the first epoch, cosine to zero), random ±2-pixel shifts and horizontal
flips of each batch. Weights and the per-epoch history (train loss, validation and test accuracy) are cached as
``dense-{name}-{recipe}.pt`` / ``.json``; every epoch also writes a resumable checkpoint, so an interrupted
training continues where it stopped::

    python benchmarks/_search_train.py --models resnet20 --epochs 12 --cache-dir /tmp/b6
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402

MODELS = {
    "resnet20": lambda: ds.load_model("resnet20", num_classes=10, in_channels=1),
    "mobilenet_v2": lambda: ds.load_model("mobilenet_v2", num_classes=10, in_channels=1, small_input=True,
                                          width_mult=0.5, dropout=0.0),  # fmt: skip
}


def subset_bundle(full: Any, n_train: int | None, n_val: int | None, seed: int = 0) -> Any:
    """``full`` with its training and validation loaders cut to ``n_train`` / ``n_val`` images (seeded draws; None
    keeps all), everything else shared: the inputs stay normalized with the full training set's statistics, the
    ones the dense model was trained on (a loader drawing its own subset would normalize with the subset's)."""
    from dataclasses import replace

    from torch.utils.data import DataLoader, Subset

    from deepslim.data import LOADER_PREPROCESSING_ATTR

    def cut(loader: Any, n: int | None, shuffle: bool) -> Any:
        if n is None or n >= len(loader.dataset):
            return loader
        idx = torch.randperm(len(loader.dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        out = DataLoader(Subset(loader.dataset, idx.tolist()), batch_size=loader.batch_size, shuffle=shuffle,
                         generator=gen)  # fmt: skip
        setattr(out, LOADER_PREPROCESSING_ATTR, getattr(loader, LOADER_PREPROCESSING_ATTR, None))
        return out

    return replace(full, train=cut(full.train, n_train, True), val=cut(full.val, n_val, False))


def recipe_key(epochs: int, lr: float, seed: int) -> str:
    return f"sgd1cyc-aug-e{epochs}-lr{lr:g}-s{seed}"


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero padding in normalized units: the border value) and horizontal flips."""
    n = x.shape[0]
    pad = nn.functional.pad(x, (2, 2, 2, 2), value=float(x.amin()))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    h, w = x.shape[-2:]
    out = torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def accuracy(net: nn.Module, loader: Any) -> float:
    net.eval()
    right = seen = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((net(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
            seen += len(y)
    return right / max(seen, 1)


def _schedule(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_converged(name: str, data: Any, *, epochs: int, lr: float = 0.1, seed: int = 0,
                    cache: str | Path, log: Any = None) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """The dense ``name`` trained ``epochs`` on ``data`` (cached under ``cache``); returns (model, record)."""
    base = Path(cache) / f"dense-{name}-{recipe_key(epochs, lr, seed)}"
    final, record_file, ckpt = (Path(f"{base}{ext}") for ext in (".pt", ".json", ".ckpt"))
    base.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = MODELS[name]()
    if final.is_file():
        net.load_state_dict(torch.load(final, weights_only=True))
        return net.eval(), json.loads(record_file.read_text()) if record_file.is_file() else {}
    net = net.to(memory_format=torch.channels_last)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    rest = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)  # fmt: skip
    steps = epochs * len(data.train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, len(data.train)))
    gen = torch.Generator().manual_seed(seed)
    record: dict[str, Any] = {"model": name, "recipe": recipe_key(epochs, lr, seed), "epochs": epochs, "lr": lr,
                              "train_images": len(data.train.dataset), "val_images": len(data.val.dataset),
                              "test_images": len(data.test.dataset), "history": []}  # fmt: skip
    start = 1
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        record, start = state["record"], state["epoch"] + 1
        data.train.generator.set_state(state["shuffle"])
    elif data.train.generator is not None:
        data.train.generator.manual_seed(seed)
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()
        net.train()
        loss_sum = seen = 0.0
        for x, y in data.train:
            x = augment(x, gen).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_s": time.perf_counter() - t0,
               "train_cpu_s": time.process_time() - c0, "val_accuracy": accuracy(net, data.val),
               "test_accuracy": accuracy(net, data.test), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
        record["history"].append(row)
        if log is not None:
            log(row)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "shuffle": data.train.generator.get_state(), "record": record,
                    "epoch": epoch}, ckpt)  # fmt: skip
    net = net.to(memory_format=torch.contiguous_format).eval()
    record["test_accuracy"] = record["history"][-1]["test_accuracy"] if record["history"] else math.nan
    torch.save(net.state_dict(), final)
    record_file.write_text(json.dumps(record, indent=1))
    return net, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--epochs", default="12", help="comma-separated, one per model (or one for all)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--cache-dir", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    epochs = [int(e) for e in args.epochs.split(",")]
    epochs = epochs * len(names) if len(epochs) == 1 else epochs
    data = ds.load_data("fashion-mnist", seed=0, calib_size=1024)
    for name, n in zip(names, epochs, strict=True):
        train_converged(name, data, epochs=n, lr=args.lr, cache=args.cache_dir,
                        log=lambda row, name=name: print(name, json.dumps(row), flush=True))  # fmt: skip


if __name__ == "__main__":
    main()
