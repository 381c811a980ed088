"""A cheaper trial proxy, and a cheaper trial timing: do they judge MobileNetV2 policies as the costly ones did?
(issue 14, session 9)

The ten float policies of session 8's proxy check (benchmarks/results/search_session8_proxy_mobilenet_v2.json, with
their reference accuracy: 300 distilled steps, on 2,000 validation and the 10,000 test images) are judged by the
proxy variants below — every one on the same cached batches and teacher outputs (:func:`proxy_batches`, as the
search now draws them once) — on the 2,000 validation images and on their first 1,000; Kendall's tau of each against
the reference, and its seconds per policy. Then the trial timing: each policy's latency ratio to dense with both
models exported by the fast TorchScript path (:mod:`deepslim.search._timing`) and by the toolkit's export, all four
files timed in one interleaved run (``RUNS`` runs), and the seconds each export took::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_proxy9.py /tmp/o6/fashion_mnv2_050_full_e10.pt OUT.json

Timed back to back (``window_s=0.0`` pinned): the protocol of the recorded numbers (session 14's timer can spread
its rounds over a window).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _search_train import subset_bundle  # noqa: E402
from deepslim.search import SearchSpace, kendall_tau  # noqa: E402
from deepslim.search._timing import export_for_timing  # noqa: E402
from deepslim.search.latency import _run_timer  # noqa: E402
from deepslim.search.recovery import proxy_batches, short_finetune_  # noqa: E402
from deepslim.search.space import Policy, prune_policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "results" / "search_session8_proxy_mobilenet_v2.json"
VARIANTS = [(80, 1e-3), (40, 2e-3), (24, 3e-3), (16, 4e-3)]  # (steps, peak lr): session 8's proxy first
RUNS = 3


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proxies(doc: dict, dense: torch.nn.Module, data: object, nets: dict) -> Iterator[None]:
    small = copy.copy(data)
    batches = {}
    for steps, _ in VARIANTS:
        t0 = time.perf_counter()
        batches[steps] = proxy_batches(data, steps, teacher=dense, seed=0)
        doc["batches_s"][str(steps)] = time.perf_counter() - t0
    for name, net in nets.items():
        row = doc["rows"][name]
        for steps, lr in VARIANTS:
            t0, b = time.perf_counter(), copy.deepcopy(net)
            short_finetune_(b, data, steps=steps, lr=lr, seed=0, temperature=4.0, batches=batches[steps])
            trained = time.perf_counter() - t0
            acc = ds.evaluate(b, data, split="val").accuracy
            row[f"p{steps}"] = {"lr": lr, "val2000": acc, "train_s": trained, "s": time.perf_counter() - t0,
                                "val1000": _first(b, small, 1000)}  # fmt: skip
        doc["rows"][name] = row
        yield


def _first(net: torch.nn.Module, data: object, n: int) -> float:
    net.eval()
    right = seen = 0
    with torch.no_grad():
        for x, y in data.val:  # type: ignore[attr-defined]
            take = min(n - seen, len(y))
            right += int((net(x[:take]).argmax(1) == y[:take]).sum())
            seen += take
            if seen >= n:
                break
    return right / seen


def taus(doc: dict) -> None:
    rows = list(doc["rows"].values())
    for steps, _ in VARIANTS:
        for split in ("val2000", "val1000"):
            got = [r[f"p{steps}"][split] for r in rows]
            doc["kendall"][f"p{steps}_{split}"] = {
                "vs_ref_val": kendall_tau(got, [r["ref_val"] for r in rows]),
                "vs_ref_test": kendall_tau(got, [r["ref_test"] for r in rows])}  # fmt: skip
    doc["kendall"]["s8_p60_val2000"] = {"vs_ref_val": kendall_tau([r["s8_proxy60_val"] for r in rows],
                                                                  [r["ref_val"] for r in rows]),
                                        "vs_ref_test": kendall_tau([r["s8_proxy60_val"] for r in rows],
                                                                   [r["ref_test"] for r in rows])}  # fmt: skip


def timings(doc: dict, dense: torch.nn.Module, nets: dict, x: torch.Tensor) -> None:
    from deepslim.export import export_onnx

    with tempfile.TemporaryDirectory() as work:
        files: dict[str, tuple[str, str]] = {}  # name -> (fast export, toolkit export)
        for name, net in [("dense", dense), *nets.items()]:
            t0 = time.perf_counter()
            how = export_for_timing(net, x, Path(work) / f"{len(files)}f.onnx")
            t1 = time.perf_counter()
            export_onnx(net, Path(work) / f"{len(files)}t.onnx", example_input=x)
            t2 = time.perf_counter()
            files[name] = (str(Path(work) / f"{len(files)}f.onnx"), str(Path(work) / f"{len(files)}t.onnx"))
            doc["export_s"][name] = {"fast": t1 - t0, "fast_how": how, "toolkit": t2 - t1}
        shape = list(x.shape)
        for name in nets:
            fd, td = files["dense"]
            fp, tp = files[name]
            runs = [_run_timer([(f, shape) for f in (fd, fp, td, tp)], 1, 10, 5, 0.0) for _ in range(RUNS)]
            doc["rows"][name]["timing"] = {"fast_ratio": [r[1] / r[0] for r in runs],
                                           "toolkit_ratio": [r[3] / r[2] for r in runs], "ms": runs}  # fmt: skip


def main() -> None:
    pretrained, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    ref = json.loads(REFERENCE.read_text())
    full = ds.load_data("fashion-mnist", seed=0, calib_size=1024)
    data = subset_bundle(full, None, 2000)  # as session 8's check: all 54k training images, 2,000 validation
    dense = PRETRAINED_ARCH["mobilenet_v2"]()
    dense.load_state_dict(torch.load(pretrained, weights_only=True))
    dense.eval()
    x = data.example_input
    space = SearchSpace.from_model(dense, x, round_to=8)
    doc: dict = {"loadavg_before": load(), "variants": VARIANTS, "rows": {}, "batches_s": {}, "kendall": {},
                 "export_s": {}, "started": time.strftime("%H:%M:%S")}  # fmt: skip
    nets = {}
    for name, row in ref["rows"].items():
        policy = Policy.from_dict(row["policy"])
        nets[name] = prune_policy(dense, space, policy, example_input=x)
        doc["rows"][name] = {"channels": row["channels"], "x_dense_s8": row["x_dense"], "ref_val": row["ref_val"],
                             "ref_test": row["ref_test"], "s8_proxy60_val": row["proxy_val"]}  # fmt: skip

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1))

    for _ in proxies(doc, dense, data, nets):
        save()
    taus(doc)
    doc["loadavg_after_proxy"] = load()
    save()
    timings(doc, dense, nets, x)
    doc["loadavg_after"], doc["finished"] = load(), time.strftime("%H:%M:%S")
    save()


if __name__ == "__main__":
    main()
