"""ToMe's merge graph, session 5's (git a9a2990) against the current one, on the trained vit_tiny (Fashion-MNIST,
``benchmarks/vit_tome.py``'s cached weights): ORT-optimized node counts, the sum of per-node medians
(``time_onnx``, 15 runs after 3 warm-up, batch 1 and 32) and ``ds.interleave`` medians at batch 1 and 32, with the
load average recorded. The old merge is read from git history, so run it from a git checkout's root:

    python benchmarks/vit_tome_merge_graph.py [--r 8] [--json benchmarks/results/vit_tome_merge_graph.json]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

import deepslim as ds
from deepslim.analysis.onnx_profile import time_onnx
from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
from vit_tome import DEFAULT_CACHE, MODEL_KW

OLD_COMMIT = "a9a2990"


def old_encoders(work: Path) -> types.ModuleType:
    """Session 5's token encoders and merge, loaded from git as modules of their own."""
    for name in ("_reduce", "encoders"):
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/deepslim/compress/tokens/{name}.py"], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
        (work / f"old{name}.py").write_text(text.replace("from deepslim.compress.tokens._reduce import",
                                                         "from old_reduce import"))  # fmt: skip
    modules = {}
    for name, file in (("old_reduce", "old_reduce.py"), ("old_encoders", "oldencoders.py")):
        spec = importlib.util.spec_from_file_location(name, work / file)
        assert spec is not None and spec.loader is not None
        modules[name] = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules["old_encoders"]


def variants(r: int, work: Path) -> dict[str, nn.Module]:
    model = ds.create_model("vit_tiny", **MODEL_KW)
    model.load_state_dict(torch.load(str(DEFAULT_CACHE).format(steps=500), weights_only=True))
    old_enc = old_encoders(work)
    old = copy.deepcopy(model).eval()
    old.__class__ = old_enc.TokenVisionTransformer
    setattr(old, "token_plans", [old_enc.LayerPlan(r=r)] * len(old.blocks))  # noqa: B010
    return {"dense": model.eval(), f"old r={r}": old, f"new r={r}": merge_tokens_(copy.deepcopy(model),
                                                                                 MergeTokensConfig(r=r))}  # fmt: skip


def run(r: int) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    torch.set_num_threads(1)
    out: dict[str, Any] = {"r": r, "load_before": os.getloadavg(), "ort_optimized_nodes": {}, "node_sum": {},
                           "interleave": {}}  # fmt: skip
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = variants(r, work)
        with torch.no_grad():
            old, new = models[f"old r={r}"](x), models[f"new r={r}"](x)
        out["top1_agreement_old_new"] = float((old.argmax(1) == new.argmax(1)).float().mean())
        files = {}
        for name, m in models.items():
            files[name] = work / f"{name.replace(' ', '_').replace('=', '')}.onnx"
            ds.export_onnx(m, files[name], example_input=x[:2])
            opts = ort.SessionOptions()
            opts.optimized_model_filepath = str(files[name]) + ".opt"
            ort.InferenceSession(str(files[name]), opts, providers=["CPUExecutionProvider"])
            out["ort_optimized_nodes"][name] = len(onnx.load(str(files[name]) + ".opt").graph.node)
        for b in (1, 32):
            for name, path in files.items():
                prof = time_onnx(path, batch_size=b, runs=15, warmup=3, threads=1)
                out["node_sum"][f"{name} b{b}"] = {"node_ms": prof.node_us / 1000,
                                                   "groups_ms": {g: t / 1000 for g, t in prof.by_group().items()}}
            res = ds.interleave({k: str(p) for k, p in files.items()}, example_input=x[:b], threads=1,
                                rounds=10 if b == 1 else 6, block=5 if b == 1 else 2)  # fmt: skip
            out["interleave"][f"b{b}"] = {k: {"median_ms": v.median_ms, "p10_ms": v.p10_ms, "p90_ms": v.p90_ms}
                                          for k, v in res.items()}  # fmt: skip
            out[f"load_after_b{b}"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=8, help="tokens merged per block")
    parser.add_argument("--json", default="benchmarks/results/vit_tome_merge_graph.json")
    args = parser.parse_args()
    out = run(args.r)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
