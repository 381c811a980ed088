"""The identical-seed check of session 9 (issue 14, session 10): the searched 0.3x policy's three recovery seeds each
scored 7,863 of the 10,000 test images although their weights differ. This rebuilds them as the benchmark's final
comparison does (``Evaluator.build(policy, "finetune")``, one Evaluator per seed), keeps every model, and reports
per image what each predicts, so that a shared model object, a cached evaluation or a coincidence can be told
apart::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_seeds10.py RESULT.json 0.3 0,1,2 OUT.json [best|uniform] \
        [CACHE_DIR]

(CACHE_DIR: the latency table's cache, default the search's; give a copy when another run uses that one.)

What it writes: per seed the test accuracy by ``ds.evaluate`` and by its own loop over the test loader, the object
id of the model and of its first weight (distinct models must not share them), a weight checksum, the validation
accuracy; per pair of seeds the images on which they predict differently, split into (a) only the first right,
(b) only the second right, (c) both wrong; and two probabilities of the observed equal counts arising by chance:
the exact sign-flip probability P(a = b) given a + b discordant images, and a bootstrap over the test images (how
often resampled test sets give all seeds one count).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _search_final9 import setup  # noqa: E402
from deepslim.search.evaluate import Evaluator  # noqa: E402
from deepslim.search.space import Policy  # noqa: E402


def predictions(net: torch.nn.Module, loader: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, label) per image of ``loader``, in its order, the model in eval mode."""
    net.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:  # type: ignore[attr-defined]
            preds.append(net(x).argmax(1))
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def equal_by_chance(a: int, b: int) -> float:
    """P(A = B) when each of the ``a + b`` images right for exactly one of two models is that model's with
    probability 1/2 (the sign-flip null: the two models equally good)."""
    n = a + b
    return 0.0 if n % 2 else math.comb(n, n // 2) / 2**n


def bootstrap_equal(correct: torch.Tensor, draws: int = 20000, seed: int = 0) -> float:
    """How often resampled test sets (with replacement) give every model the same count of right answers."""
    gen = torch.Generator().manual_seed(seed)
    n = correct.shape[1]
    hits = 0
    for _ in range(draws // 500):
        idx = torch.randint(0, n, (500, n), generator=gen)
        counts = correct.T[idx].sum(1)  # (500, models)
        hits += int((counts == counts[:, :1]).all(1).sum())
    return hits / (draws // 500 * 500)


def main() -> None:
    result, budget, out = sys.argv[1], sys.argv[2], Path(sys.argv[4])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    label = sys.argv[5] if len(sys.argv) > 5 else "best"
    settings, run, full, data, dense, space, table = setup(result, budget, sys.argv[6] if len(sys.argv) > 6 else None)
    policy = Policy.from_dict(run["final"][label]["policy"])
    doc: dict = {"source": result, "budget": budget, "policy": label, "started": time.strftime("%H:%M:%S"),
                 "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "seeds": []}  # fmt: skip
    nets, correct = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        ev = Evaluator(dense, data, space, table, finetune_epochs=settings["finetune_epochs"], seed=seed,
                       temperature=settings["temperature"])  # fmt: skip
        net, _ = ev.build(policy, "finetune")
        pred, y = predictions(net, full.test)
        right = pred == y
        nets.append(net)
        correct.append(right)
        first = next(net.parameters())
        doc["seeds"].append({"seed": seed, "test_accuracy_evaluate": ds.evaluate(net, full, split="test").accuracy,
                             "test_right_own_loop": int(right.sum()), "test_images": int(len(y)),
                             "val_accuracy": ds.evaluate(net, data, split="val").accuracy,
                             "model_id": id(net), "first_weight_data_ptr": first.data_ptr(),
                             "weight_checksum": float(sum(p.detach().double().abs().sum() for p in net.parameters())),
                             "predicted_class_counts": torch.bincount(pred, minlength=10).tolist(),
                             "seconds": time.perf_counter() - t0})  # fmt: skip
        torch.save(pred, out.with_suffix(f".seed{seed}.pt"))
        out.write_text(json.dumps(doc, indent=1))
    pairs = []
    preds = [torch.load(out.with_suffix(f".seed{s}.pt")) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            differ = preds[i] != preds[j]
            a = int((correct[i] & ~correct[j]).sum())
            b = int((correct[j] & ~correct[i]).sum())
            pairs.append({"seeds": [seeds[i], seeds[j]], "predict_differently": int(differ.sum()),
                          "only_first_right": a, "only_second_right": b,
                          "both_wrong_differently": int(differ.sum()) - a - b,
                          "p_equal_sign_flip": equal_by_chance(a, b),
                          "same_model_object": nets[i] is nets[j]})  # fmt: skip
    doc["pairs"] = pairs
    doc["p_all_equal_bootstrap"] = bootstrap_equal(torch.stack(correct))
    doc["loadavg_after"], doc["finished"] = Path("/proc/loadavg").read_text().split()[:3], time.strftime("%H:%M:%S")
    out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
