"""Where all-MiniLM-L6-v2's time goes in ONNX Runtime, block by block (attention / FFN / embeddings / other): the
fp32 file from :func:`deepslim.export_onnx` next to the fused, per-channel dynamic int8 file from
:func:`deepslim.export_fused_int8`, at batch 1 and 32, sequence 32, measured by ORT's own per-node profiler
(:func:`deepslim.analysis.onnx_profile.time_onnx`, median of each node over the runs). Inputs are real token ids of
the project's sentences (no padding at sequence 32 for most of them; the mask marks the rest). One thread.

    HF_HUB_OFFLINE=1 python benchmarks/block_view.py [--json benchmarks/results/block_view.json] [--runs 20]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

import deepslim as ds
from _common import result_header, write_result
from deepslim.analysis.onnx_profile import time_onnx
from deepslim.data.sentences import training_sentences
from deepslim.models.hf import tokenize

THREADS = 1
SEQ = 32
BATCHES = (1, 32)


def feeds_for(path: Path, arrays: list[Any]) -> dict[str, Any]:
    """The file's graph inputs (initializers excluded), in order, fed with ``arrays``."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    return dict(zip(names, arrays, strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = result_header("block_view", THREADS)
    model = ds.load_model("all-minilm-l6-v2").eval()
    ids, mask = tokenize(model, training_sentences(64), seq_len=SEQ)
    out["views"] = {}
    with tempfile.TemporaryDirectory() as work:
        fp32, int8 = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        ds.export_onnx(model, fp32, example_input=(ids[:2], mask[:2]))
        fused = ds.export_fused_int8(model, int8, example_input=(ids[:2], mask[:2]),
                                     check_inputs=[(ids[:32], mask[:32]), (ids[32:], mask[32:])],
                                     min_cosine=0.99)  # fmt: skip
        out["int8"] = {"fused_ops": fused.fused_ops, "float_nodes": list(fused.float_nodes),
                       "cosine_mean": fused.cosine_mean, "cosine_min": fused.cosine_min}  # fmt: skip
        for b in BATCHES:
            for label, path in (("fp32", fp32), ("fused int8", int8)):
                feeds = feeds_for(path, [ids[:b].numpy(), mask[:b].numpy()])
                prof = time_onnx(path, feeds=feeds, runs=args.runs, warmup=5, threads=THREADS)
                print(f"\n== all-MiniLM-L6-v2 {label}, batch {b}, sequence {SEQ}\n{prof}", flush=True)
                d = prof.to_dict()
                d.pop("nodes")
                out["views"][f"{label} b{b}"] = d
    write_result(out, args.json, echo=False)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(THREADS)
    raise SystemExit(main())
