"""Does a trial's accuracy proxy rank MobileNetV2 policies as a longer recovery does, and do role-structured policies
beat uniform ones at equal measured latency? (issue 14, session 8)

Ten channel policies of the converged MobileNetV2 0.5 (Fashion-MNIST, ``--pretrained``), all float: three uniform,
five role-structured (:meth:`SearchSpace.by_role`), two random (``sample_at``, seed 8). Each is timed once in ONNX
Runtime interleaved with the dense model (1 thread, 10 rounds, the minimum), then judged three ways on 2,000
validation images: batch-norm re-estimation alone (the session-7 trial proxy), ``PROXY`` distilled steps
(:func:`short_finetune_`, the session-8 proxy) and ``REF`` distilled steps (the reference recovery, also scored on the
10,000 test images); Kendall's tau of each proxy against the reference::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_proxy.py /tmp/o6/fashion_mnv2_050_full_e10.pt 60 300 OUT.json
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _search_train import subset_bundle  # noqa: E402
from deepslim.search import SearchSpace, kendall_tau  # noqa: E402
from deepslim.search.latency import time_models  # noqa: E402
from deepslim.search.recovery import reestimate_bn_, short_finetune_  # noqa: E402
from deepslim.search.space import Policy, prune_policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402


def policies(space: SearchSpace) -> dict[str, Policy]:
    rng = random.Random(8)
    found = {"uniform 0.625": space.uniform(0.625), "uniform 0.5": space.uniform(0.5),
             "uniform 0.75": space.uniform(0.75), "dw 0.375": space.by_role({"depthwise": 0.375}),
             "dw 0.25": space.by_role({"depthwise": 0.25}),
             "dw 0.5 plain 0.5": space.by_role({"depthwise": 0.5, "plain": 0.5}),
             "dw 0.375 res 0.75 plain 0.5": space.by_role({"depthwise": 0.375, "residual": 0.75, "plain": 0.5}),
             "dw 0.875 res 0.5 plain 0.5": space.by_role({"depthwise": 0.875, "residual": 0.5, "plain": 0.5}),
             "random a": space.sample_at(rng, 0.5), "random b": space.sample_at(rng, 0.4)}  # fmt: skip
    return {k: Policy(keep=p.keep, int8=dict.fromkeys(p.int8, False), recovery=p.recovery) for k, p in found.items()}


def main() -> None:
    pretrained, proxy, ref, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(1)
    full = ds.load_data("fashion-mnist", seed=0, calib_size=1024)
    data = subset_bundle(full, None, 2000)  # all 54k training images, 2,000 validation images
    dense = PRETRAINED_ARCH["mobilenet_v2"]()
    dense.load_state_dict(torch.load(pretrained, weights_only=True))
    dense.eval()
    x = data.example_input
    space = SearchSpace.from_model(dense, x, round_to=8)
    pols = policies(space)
    doc: dict = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "proxy_steps": proxy,
                 "ref_steps": ref, "rows": {}}  # fmt: skip

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1))

    nets = {k: prune_policy(dense, space, p, example_input=x) for k, p in pols.items()}
    times = time_models([(dense, x)] + [(n, x) for n in nets.values()], threads=1, rounds=10)
    doc["dense_ms"] = times[0]
    for (k, p), t in zip(pols.items(), times[1:], strict=True):
        doc["rows"][k] = {"policy": p.to_dict(), "channels": sum(p.keep.values()), "ms": t, "x_dense": t / times[0]}
    save()
    for k, net in nets.items():
        t1, row = time.time(), doc["rows"][k]
        a = copy.deepcopy(net)
        reestimate_bn_(a, data.calib, task=data.task)
        row["bn_val"] = ds.evaluate(a, data, split="val").accuracy
        b = copy.deepcopy(net)
        short_finetune_(b, data, steps=proxy, lr=1e-3, seed=0, teacher=dense)
        row["proxy_val"], row["proxy_s"] = ds.evaluate(b, data, split="val").accuracy, time.time() - t1
        save()
    for k, net in nets.items():
        t1, row = time.time(), doc["rows"][k]
        c = copy.deepcopy(net)
        short_finetune_(c, data, steps=ref, lr=1e-3, seed=0, teacher=dense)
        row["ref_val"] = ds.evaluate(c, data, split="val").accuracy
        row["ref_test"], row["ref_s"] = ds.evaluate(c, full, split="test").accuracy, time.time() - t1
        save()
    rows = list(doc["rows"].values())
    doc["kendall_bn_vs_ref"] = kendall_tau([r["bn_val"] for r in rows], [r["ref_val"] for r in rows])
    doc["kendall_proxy_vs_ref"] = kendall_tau([r["proxy_val"] for r in rows], [r["ref_val"] for r in rows])
    doc["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    save()


if __name__ == "__main__":
    main()
