"""Learned token thresholds (LTP) on all-MiniLM-L6-v2 at sequence 128: learn one threshold per layer (soft masks,
distilled against the dense model under a token budget, ``deepslim.learn_token_thresholds``),
then measure the hard-threshold model against the dense one in ONNX Runtime.

Distillation text: runs of 4–7 stdlib docstring sentences (~100 tokens; never the evaluation texts). Fidelity:
cosine of the ONNX file's embeddings to the fp32 file's on the 72 built-in passages at sequence 128 and the 220
built-in sentences at sequence 32 (one file serves both: its token count is dynamic). Speed: the token count
depends on the text, so latency is taken on real text — the built-in passages run together and cut to exactly
128 tokens (no padding), one text per call at batch 1, 32 texts at batch 32 — and at batch 32 also on the padded
passages (a batch keeps as many tokens as its most demanding row). Timing is in this process, one ONNX Runtime
session per file with 1 intra-op thread, files alternated with the order reversed every round; each call's wall
time and the calling thread's CPU time are recorded and the ratios of medians reported. The load average is
recorded before and after (the machine is shared).

    python benchmarks/token_thresholds.py [--json benchmarks/results/transformer_ltp_session6.json]
        [--cpu 300] [--keep 0.5] [--penalty 4] [--lr 1e-4] [--pool-removed] [--from PREFIX] [--rounds 6]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header
from deepslim.compress.tokens import PruneTokensConfig, prune_tokens_
from deepslim.data.sentences import passage_set
from deepslim.models.hf import IdsOnly, tokenize
from deepslim.tasks.similarity import embedding_fidelity
from deepslim.train import TokenThresholdConfig, kept_shares, learn_token_thresholds
from deepslim.train.student import EncoderKDConfig
from transformer_encoder import docstring_sentences, ort_embed, passages, prefixed

THREADS = 1


def export(model: torch.nn.Module, path: Path, seq: int = 128) -> Path:
    ids = torch.full((2, seq), 2000, dtype=torch.long)
    torch.onnx.export(IdsOnly(model).eval(), (ids,), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})  # fmt: skip
    return path


def full_length_texts(teacher: torch.nn.Module, n: int = 32) -> torch.Tensor:
    """``n`` real texts of exactly 128 tokens: the built-in passages, two at a time, cut to length."""
    texts, _ = passage_set()
    joined = [texts[i % len(texts)] + " " + texts[(i + 7) % len(texts)] for i in range(n)]
    ids, mask = tokenize(teacher, joined, seq_len=128)
    if not bool(mask.all()):
        raise RuntimeError("a timing text is shorter than 128 tokens")
    return ids


def time_files(files: dict[str, Path], feeds: list[torch.Tensor], rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and thread-CPU ms per call of each file, over ``rounds`` passes through ``feeds``, alternated."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    wall: dict[str, list[float]] = {k: [] for k in files}
    cpu: dict[str, list[float]] = {k: [] for k in files}
    for s in sessions.values():
        s.run(None, {"input_ids": feeds[0].numpy()})  # warm-up
    for r in range(rounds):
        for name in (list(files) if r % 2 == 0 else list(files)[::-1]):
            for feed in feeds:
                w, c = time.perf_counter(), time.thread_time()
                sessions[name].run(None, {"input_ids": feed.numpy()})
                cpu[name].append(time.thread_time() - c)
                wall[name].append(time.perf_counter() - w)
    return {k: {"wall_ms": round(1e3 * statistics.median(wall[k]), 3), "cpu_ms": round(1e3 * statistics.median(cpu[k]),
                                                                                        3)} for k in files}  # fmt: skip


def learned(teacher: torch.nn.Module, args: argparse.Namespace, out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    student = copy.deepcopy(teacher)
    if args.from_ is not None:
        info = json.loads(prefixed(args.from_, ".json").read_text())
        student.load_state_dict(torch.load(prefixed(args.from_, ".pt")))
        prune_tokens_(student, PruneTokensConfig(keep_ratio=1.0, threshold=tuple(info["kd"]["thresholds"]),
                                                 pool_removed=info["config"].get("pool_removed", False)))  # fmt: skip
        return student.eval(), info
    ids, mask = passages(teacher, docstring_sentences())
    config = TokenThresholdConfig(keep_target=args.keep, penalty=args.penalty, pool_removed=args.pool_removed)
    kd = EncoderKDConfig(cpu_seconds=args.cpu, lr=args.lr, batch_size=16)
    info = {"config": config.to_dict(), "kd_config": kd.to_dict(), "texts": len(ids),
            "kd": learn_token_thresholds(student, teacher, ids, mask, config, kd)}
    reduction, student.reduction = student.reduction, None  # type: ignore[assignment]  # saved without it
    torch.save(student.state_dict(), prefixed(out, ".pt"))
    student.reduction = reduction
    prefixed(out, ".json").write_text(json.dumps(info, indent=1) + "\n")
    return student.eval(), info


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = result_header("token_thresholds", THREADS)
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    student, result["learned"] = learned(teacher, args, Path(args.json).with_suffix(".ltp"))
    data = {32: ds.load_data("sentences", seq_len=32, train_size=64),
            128: ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)}
    timing = full_length_texts(teacher)
    test128: Any = data[128].test.dataset  # the sentence set's token tensors (ids, mask)
    padded = test128.ids[:32]
    result["kept_per_layer"] = {"full_length_128": kept_shares(student, timing, torch.ones_like(timing)),
                                "passages_128": kept_shares(student, test128.ids, test128.mask)}
    with tempfile.TemporaryDirectory() as work:
        files = {"ort_fp32": export(teacher, Path(work) / "fp32.onnx"), "ltp": export(student, Path(work) / "ltp.onnx")}
        result["fidelity"] = {}
        for seq, bundle in data.items():
            ids = getattr(bundle.test.dataset, "ids")  # noqa: B009
            ref = ort_embed(files["ort_fp32"], ids)
            result["fidelity"][f"seq{seq}"] = embedding_fidelity(ort_embed(files["ltp"], ids), ref,
                                                                 pairs=bundle.info["pairs"])  # fmt: skip
        result["timing"] = {}
        for what, feeds in (("b1_full128", [timing[i : i + 1] for i in range(len(timing))]), ("b32_full128", [timing]),
                            ("b32_padded_passages128", [padded])):  # fmt: skip
            t = time_files(files, feeds, args.rounds if what.startswith("b1") else max(3, args.rounds))
            for k in ("wall_ms", "cpu_ms"):
                t[f"speedup_{k}"] = round(t["ort_fp32"][k] / t["ltp"][k], 3)  # type: ignore[arg-type]
            result["timing"][what] = t
    result["load_average_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/transformer_ltp_session6.json")
    parser.add_argument("--cpu", type=float, default=300.0, help="distillation CPU seconds")
    parser.add_argument("--keep", type=float, default=0.5, help="token budget: mean share kept per layer")
    parser.add_argument("--penalty", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=1e-4, help="weights' learning rate (thresholds: 0.01)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pool-removed", action="store_true", help="removed tokens still count in the pooling")
    parser.add_argument("--from", dest="from_", type=Path, default=None, help="reuse PREFIX.pt/.json of a run")
    args = parser.parse_args()
    result = run(args)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("kept_per_layer", "fidelity", "timing")}, indent=1))
    print("thresholds:", result["learned"]["kd"]["thresholds"], "load:", result["load_average_before"],
          result["load_average_after"])  # fmt: skip


if __name__ == "__main__":
    main()
