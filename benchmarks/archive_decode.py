"""How fast a ``.dsz`` archive loads, with the per-symbol Huffman decoder of session 10 and the vectorized one of
session 11, interleaved in one process (the same archive bytes, alternating loads; CPU seconds, medians, ratios).

- all-MiniLM-L6-v2 after dynamic int8 (``quantize_`` with ``LinearQuantConfig(bits=8)``, calibration ``auto`` ->
  dynamic on the sentences' calibration batches), saved with ``save_model(m, "x.dsz")``: 36 linear layers stored as
  10.8 M Huffman-coded int8 codes (archive format version 2);
- a Deep Compression ResNet-18 (ImageNet shape, 11.7 M parameters): 90% magnitude pruning, 5-bit k-means weight
  sharing, then the archive: Huffman-coded relative indices and codebook indices.

``load`` is ``load_model("x.dsz")`` (the decode, the architecture's rebuild and the state's load); ``save`` is
``save_model`` with the per-bit-position packing of session 10 and the vectorized one. The old coder is the tests'
oracle (tests/compress/test_huffman_vectorised.py), patched in for the "before" rounds; every load must give the
same tensors bit for bit, and both savers the same bytes (checked, else the run fails). For MiniLM also: the
version-2 archive's load against that of the layout session 9 wrote (dynamic weights as raw float32, 90 MB, no
Huffman decoding of them), alternating.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 5 python benchmarks/archive_decode.py
        [--json benchmarks/results/archive_decode.json] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, save_json
from deepslim.compress.coding import huffman
from int8_archive import float_layout

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.compress.test_huffman_vectorised import _old_decode, _old_pack  # noqa: E402

CODERS = {"session 10 (per symbol)": (_old_decode, _old_pack), "vectorized": (huffman.decode, huffman._pack)}


def _use(coder: str) -> None:
    huffman.decode, huffman._pack = CODERS[coder]


def _cpu_seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def _minilm() -> torch.nn.Module:
    model = ds.load_model("all-minilm-l6-v2").eval()
    data = ds.load_data("sentences")
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=data.calib)
    assert ds.quantization_report(model).calibration == "dynamic"
    return model


def _deep_compression_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ds.create_model("resnet18").eval()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9))
    ds.cluster_(model, ds.KMeansConfig(bits=5))
    return model


def measure(name: str, model: torch.nn.Module, work: Path, rounds: int) -> dict[str, Any]:
    """Save and load ``model`` with both coders, alternating, ``rounds`` times each."""
    seconds: dict[str, dict[str, list[float]]] = {c: {"save": [], "load": []} for c in CODERS}
    blobs: dict[str, bytes] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for r in range(rounds):
        for coder in CODERS if r % 2 == 0 else reversed(list(CODERS)):
            _use(coder)
            path = work / f"{name}.dsz"
            save_s, _ = _cpu_seconds(lambda: ds.save_model(model, path))  # noqa: B023
            load_s, loaded = _cpu_seconds(lambda: ds.load_model(str(path)))  # noqa: B023
            seconds[coder]["save"].append(save_s)
            seconds[coder]["load"].append(load_s)
            blobs.setdefault(coder, path.read_bytes())
            states.setdefault(coder, loaded.state_dict())
    _use("vectorized")
    old, new = (states[c] for c in CODERS)
    if blobs["vectorized"] != blobs["session 10 (per symbol)"] or old.keys() != new.keys() or not all(
            torch.equal(old[k], new[k]) for k in old):  # fmt: skip
        raise SystemExit(f"{name}: the two coders disagree")
    info = ds.archive_info(blobs["vectorized"])
    median = {c: {k: statistics.median(v) for k, v in s.items()} for c, s in seconds.items()}
    before, after = median["session 10 (per symbol)"], median["vectorized"]
    return {"archive_bytes": info.total_bytes, "by_part": info.by_part, "cpu_seconds": seconds,
            "median_cpu_seconds": median, "load_speedup": before["load"] / after["load"],
            "save_speedup": before["save"] / after["save"], "identical": True}  # fmt: skip


def against_float_layout(model: torch.nn.Module, work: Path, rounds: int) -> dict[str, Any]:
    """Loads of the version-2 archive (int8 codes, vectorized decoder) alternating with loads of the layout session
    9 wrote (dynamic weights as raw float32, version 1: no Huffman decoding of them), CPU seconds."""
    paths = {"version 2 (int8 codes)": work / "v2.dsz", "version 1 (float weights)": work / "v1.dsz"}
    ds.save_model(model, paths["version 2 (int8 codes)"])
    with float_layout():
        ds.save_model(model, paths["version 1 (float weights)"])
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for label, path in paths.items():
            seconds[label].append(_cpu_seconds(lambda: ds.load_model(str(path)))[0])  # noqa: B023
    return {"bytes": {k: p.stat().st_size for k, p in paths.items()}, "load_cpu_seconds": seconds,
            "median_load_cpu_seconds": {k: statistics.median(v) for k, v in seconds.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/archive_decode.json")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, Any] = {**result_header("archive_decode", 1), "rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for name, build in (("all-minilm-l6-v2 dynamic int8", _minilm),
                            ("resnet18 deep compression", _deep_compression_resnet18)):  # fmt: skip
            model = build()
            result["models"][name] = measure(name.split()[0], copy.deepcopy(model), Path(work), args.rounds)
            if name.startswith("all-minilm"):
                result["models"][name]["against_float_layout"] = against_float_layout(model, Path(work), args.rounds)
            save_json(result, args.json)
    result["load_average_after"] = os.getloadavg()
    save_json(result, args.json)
    for name, r in result["models"].items():
        m = r["median_cpu_seconds"]
        print(f"{name}: {r['archive_bytes']:,} B; load {m['session 10 (per symbol)']['load']:.2f} s -> "
              f"{m['vectorized']['load']:.2f} s ({r['load_speedup']:.1f}x); save "
              f"{m['session 10 (per symbol)']['save']:.2f} s -> {m['vectorized']['save']:.2f} s "
              f"({r['save_speedup']:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
