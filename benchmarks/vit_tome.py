"""Token merging (ToMe) and token pruning on the zoo's ``vit_tiny`` trained on Fashion-MNIST: test accuracy on the
full 10,000-image test set, throughput in ONNX Runtime (batch 1 and 32) and in PyTorch eager, and where each file's
time goes (attention / FFN / embeddings / other, from ONNX Runtime's own per-node profiler).

The model is ``vit_tiny(in_channels=1, input_size=28, patch_size=4)``: 49 patches + CLS = 50 tokens, 6 blocks of
width 192, 1.8 M parameters. It is trained from scratch with one thread for ``--steps`` AdamW steps of batch 128 drawn
from the full training split (54,000 images; 6,000 held out for validation), and its weights are cached
(``--cache``), so reruns skip training. ToMe (r tokens merged per block) and token pruning are applied to the
trained weights without retraining (ToMe's off-the-shelf setting). Accuracy is that of each exported ONNX file on
the full 10,000-image test set. Every variant is exported with :func:`deepslim.export_onnx` and timed round-robin
with :func:`deepslim.interleave` (own processes, order reversed every round) at batch 1 and 32; PyTorch eager is
timed round-robin in this process; the medians are compared. The dense and merged files are then profiled node by
node (:func:`deepslim.analysis.onnx_profile.time_onnx`): attention / FFN / embeddings / other per block.
``--stage timing`` times files exported from untrained weights when no trained model is cached yet (same graphs,
same shapes, so the same cost in ORT's dense kernels); ``--stage accuracy`` measures the trained variants in PyTorch.
The load average is recorded before, between stages and after: the machine is shared. ``--cpu-repeats N`` also
times every file by the calling thread's CPU time (``_cpu_timer.py``, N processes per batch; session 20), the
measure to use when the load is above the 2 cores.

    python benchmarks/vit_tome.py [--steps 500] [--cache PATH] [--json benchmarks/results/vit_tome.json]
        [--stage all|train|accuracy|timing] [--rounds 10] [--n-test N] [--cpu-repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import deepslim as ds
from _common import result_header, save_json, write_result
from deepslim.compress.tokens import MergeTokensConfig, PruneTokensConfig, merge_tokens_, prune_tokens_

THREADS = 1
MODEL_KW: dict[str, Any] = {"in_channels": 1, "input_size": 28, "patch_size": 4, "num_classes": 10}
DEFAULT_CACHE = Path.home() / ".cache" / "deepslim" / "vit_tiny_fashion_mnist_s{steps}.pt"
MERGE_R = (4, 8, 12)
PRUNE_KEEP = (0.8,)
BATCHES = (1, 32)

log = logging.getLogger("vit_tome")


def trained_model(data: ds.DataBundle, steps: int, cache: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained ViT: from ``cache`` when it exists, else trained and cached.

    Training is a fixed number of AdamW steps (batch 128 from the shuffled training set, lr 1e-3, weight decay
    0.05, a 5% warm-up and a cosine decay) rather than whole epochs: on a shared 2-core machine an epoch of this
    model takes 13 CPU-minutes, so the step count is what the load allows.
    """
    model = ds.create_model("vit_tiny", **MODEL_KW)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval(), {"cached": str(cache)}
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start, done, seen = time.perf_counter(), 0, 0
    model.train()
    while done < steps:
        for x, y in data.train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done, seen = done + 1, seen + len(y)
            if done % 10 == 0:
                log.info("step %d/%d: loss %.4f (%.0f s)", done, steps, loss.item(), time.perf_counter() - start)
            if done == steps:
                break
    seconds = time.perf_counter() - start
    val = ds.evaluate(model, data, split="val", threads=THREADS)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, cache)
    info = {"steps": steps, "batch_size": 128, "images_seen": seen, "epochs": round(seen / len(data.train.dataset), 3),
            "train_seconds": round(seconds, 1), "val_accuracy": val.accuracy}  # fmt: skip
    log.info("trained: %s", info)
    return model.eval(), info


def variants(model: nn.Module) -> dict[str, nn.Module]:
    """The dense model, ToMe at each r, and token pruning at each keep ratio (all sharing the trained weights)."""
    out = {"dense": model}
    for r in MERGE_R:
        out[f"tome r={r}"] = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=r))
    for keep in PRUNE_KEEP:
        out[f"prune keep={keep}"] = prune_tokens_(copy.deepcopy(model), PruneTokensConfig(keep_ratio=keep))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="training steps of batch 128")
    p.add_argument("--cache", type=Path, help="trained weights (default: ~/.cache/deepslim/...)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--stage", choices=("all", "train", "accuracy", "timing"), default="all",
                   help="all (default); train: only train (or load) the model; accuracy: test accuracy of each "
                        "variant in PyTorch; timing: export and time every variant (the trained weights when cached, "
                        "else untrained ones: the graphs and their cost are the same)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    p.add_argument("--n-test", type=int, help="test images (default: all 10,000; fewer only for a smoke run)")
    p.add_argument("--cpu-repeats", type=int, default=0,
                   help="also time ORT by thread CPU time: this many processes per batch (0: off)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    out = result_header("vit_tome", THREADS)
    cache = args.cache or Path(str(DEFAULT_CACHE).format(steps=args.steps))
    data = ds.load_data("fashion-mnist", n_test=args.n_test)
    if args.stage == "timing" and not cache.is_file():  # graphs and shapes do not depend on the weights' values
        torch.manual_seed(0)
        model, out["training"] = ds.create_model("vit_tiny", **MODEL_KW).eval(), {"weights": "untrained (seed 0)"}
    else:
        model, out["training"] = trained_model(data, args.steps, cache)
    save_json(out, args.json)
    if args.stage == "train":
        write_result(out, args.json)
        return 0
    from _vit_tome_measure import export_all, measure_accuracy, measure_timing, test_arrays

    x, y = test_arrays(data)
    models = variants(model)
    out.update(variants={k: {} for k in models}, load_average_stages={}, stage=args.stage)
    with tempfile.TemporaryDirectory() as work:
        files = export_all(models, x, Path(work)) if args.stage in ("all", "timing") else None
        if args.stage in ("all", "accuracy"):
            measure_accuracy(models, x, y, files, out, save=lambda: save_json(out, args.json))
        if files is not None:
            measure_timing(models, x, files, out, rounds=args.rounds, threads=THREADS, batches=BATCHES,
                           save=lambda: save_json(out, args.json), cpu_repeats=args.cpu_repeats)  # fmt: skip
    write_result(out, args.json, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
