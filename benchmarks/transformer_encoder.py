"""all-MiniLM-L6-v2 in ONNX Runtime: fp32, ORT's own transformer optimizer + dynamic int8, and deepslim's token
merging (ToMe), token pruning and a 3-layer distilled student — latency at batch 1 and 32, sequence 32 and 128,
next to fidelity to the fp32 embeddings on the built-in sentence set (``load_data("sentences")``; at sequence 128
the ~100-token passages, ``passages=True``).

Every file is exported with the TorchScript ONNX exporter (``dynamo=False``: it keeps the eager attention pattern
that ORT's optimizer fuses), takes ``input_ids`` only (mask = ids != [PAD]) and has a dynamic batch; the token
reducers are exported per sequence length (their merge counts are fixed). Latency inputs are full-length token ids
(no padding, so no reduction gets padding for free); files are timed round-robin with ``deepslim.interleave``
(own processes, spinning off, order reversed every round). Fidelity is computed from each ONNX file's own outputs.
The load average is recorded before and after: the machine is shared, and a load above its core count makes the
numbers noisy.

    python benchmarks/transformer_encoder.py [--json benchmarks/results/transformer_encoder.json] [--epochs 2]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import re
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header
from deepslim.compress.prune import HeadPruneConfig, prune_heads_
from deepslim.compress.tokens import (
    MergeTokensConfig,
    PruneTokensConfig,
    drop_layers_,
    merge_tokens_,
    prune_tokens_,
)
from deepslim.data.sentences import training_sentences
from deepslim.export._torchscript import export_fused_int8
from deepslim.models.hf import IdsOnly, tokenize
from deepslim.tasks.similarity import embedding_fidelity, sentence_fidelity

THREADS = 1
SEQS = (32, 128)
BATCHES = (1, 32)
TOME_R = {32: 2, 128: 8}
KEEP = {32: 0.9, 128: 0.9}
STUDENT_CANDIDATES = ([0, 2, 4], [1, 3, 5], [0, 2, 5], [0, 3, 5])
HEADS = HeadPruneConfig(head_ratio=1 / 3, ffn_ratio=0.25)  # a third of the heads, a quarter of the hidden units


def docstring_sentences() -> list[str]:
    """Natural English sentences from the docstrings of Python's standard library (~6,000 distinct): distillation
    text written by other people for other purposes, so it shares nothing with the evaluation sentences."""
    found: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for text in re.split(r"(?<=[.!?])\s+", " ".join((ast.get_docstring(node) or "").split())):
                    words = text.split()
                    if 6 <= len(words) <= 30 and sum(c.isalpha() or c == " " for c in text) > 0.9 * len(text):
                        found[text] = None
    return list(found)


def distill_bundle(teacher: torch.nn.Module, test: ds.DataBundle, n: int, seed: int = 0) -> ds.DataBundle:
    """The sentence set's test split with distillation text: stdlib docstring sentences plus template sentences
    (3:1), shuffled; 256 of them for validation."""
    from torch.utils.data import DataLoader, TensorDataset

    docs = docstring_sentences()
    texts = docs + training_sentences(len(docs) // 3, seed=seed)
    random.Random(seed).shuffle(texts)
    ids, mask = tokenize(teacher, texts[: n + 256], seq_len=int(test.info["seq_len"]))

    class Named(TensorDataset):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
            a, b = super().__getitem__(i)
            return {"input_ids": a, "attention_mask": b}

    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(Named(ids[:n], mask[:n]), batch_size=32, shuffle=True, generator=gen)
    val = DataLoader(Named(ids[n:], mask[n:]), batch_size=64)
    return ds.data.DataBundle(name="distill-text", train=train, val=val, test=test.test, calib=val,
                              example_input=test.example_input, num_classes=0, info=dict(test.info),
                              task=test.task)  # fmt: skip


def head_pruned(teacher: torch.nn.Module, test: ds.DataBundle, args: argparse.Namespace) -> tuple[Any, dict]:
    """Prune heads and hidden units (sensitivity on distillation text, least-squares refit), then distill the
    embeddings (1 − cosine) on the docstring + template text; CPU seconds of each step recorded."""
    data = distill_bundle(teacher, test, args.distill_size)
    student = copy.deepcopy(teacher)
    c0 = time.process_time()
    plan = prune_heads_(student, HEADS, calib_data=data.train)
    info: dict[str, Any] = {"config": HEADS.to_dict(), "prune_cpu_s": round(time.process_time() - c0, 1),
                            "heads": plan.heads(), "kept": {b.name: b.keep for b in plan.blocks},
                            "test_fidelity_before_distill": sentence_fidelity(student, teacher, test)}  # fmt: skip
    c0 = time.process_time()
    ds.train.distill(student, teacher, data, ds.KDConfig(alpha=1.0), epochs=args.heads_epochs, lr=args.heads_lr,
                     task="embedding")  # fmt: skip
    info.update(distill_cpu_s=round(time.process_time() - c0, 1), distill_texts=args.distill_size,
                epochs=args.heads_epochs, lr=args.heads_lr,
                test_fidelity_after_distill=sentence_fidelity(student, teacher, test))  # fmt: skip
    torch.save(student.state_dict(), Path(args.json).with_suffix(".heads.pt"))
    return student.eval(), info


def export(model: torch.nn.Module, path: Path, seq: int) -> Path:
    ids = torch.full((2, seq), 2000, dtype=torch.long)
    torch.onnx.export(IdsOnly(model).eval(), (ids,), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch"}, "embedding": {0: "batch"}})  # fmt: skip
    return path


def ort_optimized_int8(fp32: Path, out: Path) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's BERT fusion, then per-channel dynamic int8 (its documented path for transformers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
    fused = opt.get_fused_operator_statistics()
    opt_path = out.with_name(out.stem + "-opt.onnx")
    opt.save_model_to_file(str(opt_path))
    # the fused graph holds com.microsoft operators that ONNX shape inference cannot type: tell the quantizer
    quantize_dynamic(str(opt_path), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": 1})  # onnx.TensorProto.FLOAT
    return out, {k: int(v) for k, v in fused.items() if v}


def ort_embed(path: Path, ids: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.cat([torch.from_numpy(sess.run(None, {"input_ids": ids[i : i + 32].numpy()})[0])
                      for i in range(0, len(ids), 32)])  # fmt: skip


def distilled_student(teacher: torch.nn.Module, data: ds.DataBundle, epochs: int) -> tuple[torch.nn.Module, dict]:
    """Drop to 3 layers (the candidate whose embeddings start closest to the teacher's on the val split), then
    distill on template sentences with the embedding task (1 − cosine to the teacher)."""
    start: dict[str, float] = {}
    for keep in STUDENT_CANDIDATES:
        student = drop_layers_(copy.deepcopy(teacher), keep)
        start[str(keep)] = ds.train.fidelity(student, teacher, data, split="val")["cosine"]
    best = max(start, key=lambda k: start[k])
    student = drop_layers_(copy.deepcopy(teacher), json.loads(best))
    t0 = time.perf_counter()
    ds.train.distill(student, teacher, data, ds.KDConfig(alpha=1.0), epochs=epochs, lr=1e-4, task="embedding")
    seconds = time.perf_counter() - t0
    after = ds.train.fidelity(student, teacher, data, split="val")["cosine"]
    return student.eval(), {"candidates_val_cosine": start, "keep": json.loads(best), "val_cosine_before": start[best],
                            "val_cosine_after": after, "distill_seconds": round(seconds, 1), "epochs": epochs}


def speed_ids(batch: int, seq: int) -> torch.Tensor:
    ids = torch.randint(2000, 29000, (batch, seq), generator=torch.Generator().manual_seed(batch * seq))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def run(args: argparse.Namespace) -> dict:
    result = result_header("transformers", THREADS)
    result["load_before"] = os.getloadavg()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    data32 = ds.load_data("sentences", seq_len=32, train_size=args.train_size)
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    chosen = set(args.variants.split(","))
    variants: dict[str, Any] = {}
    if "student3" in chosen:
        student, result["student"] = distilled_student(teacher, data32, args.epochs)
        result["student"]["test_fidelity_torch_seq32"] = sentence_fidelity(student, teacher, data32)
        variants["student3"] = lambda s: student
    if "heads" in chosen:
        pruned, result["heads"] = head_pruned(teacher, data32, args)
        variants["heads"] = lambda s: pruned
    if "tome" in chosen:
        variants["tome"] = lambda s: merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=TOME_R[s]))
    if "prune" in chosen:
        variants["prune"] = lambda s: prune_tokens_(copy.deepcopy(teacher), PruneTokensConfig(keep_ratio=KEEP[s]))
    result["settings"] = {"tome_r": TOME_R, "prune_keep_ratio": KEEP, "threads": THREADS, "heads": HEADS.to_dict()}
    result["rows"] = []
    with tempfile.TemporaryDirectory() as work:
        for seq, data in ((32, data32), (128, data128)):
            files = {"ort_fp32": export(teacher, Path(work) / f"fp32-{seq}.onnx", seq)}
            if "ort_opt_int8" in chosen:
                files["ort_opt_int8"], fused = ort_optimized_int8(files["ort_fp32"], Path(work) / f"int8-{seq}.onnx")
                result[f"ort_fused_ops_seq{seq}"] = fused
            if "ds_fused_int8" in chosen:
                files["ds_fused_int8"], result[f"ds_fused_int8_seq{seq}"] = fused_int8(teacher, data, work, seq)
            for name, build in variants.items():
                files[name] = export(build(seq), Path(work) / f"{name}-{seq}.onnx", seq)
            result["rows"] += measure(files, data, seq, args)
    result["load_after"] = os.getloadavg()
    return result


def fused_int8(teacher: torch.nn.Module, data: ds.DataBundle, work: str, seq: int) -> tuple[Path, dict]:
    """deepslim's own int8: TorchScript export + ORT's fusion + per-channel dynamic int8, fp32 projections added
    (first layer first) until the mean cosine to PyTorch on the test texts reaches 0.995."""
    ids = getattr(data.test.dataset, "ids")  # noqa: B009
    r = export_fused_int8(IdsOnly(teacher), Path(work) / f"ds-int8-{seq}.onnx", example_input=(ids[:2],),
                          check_inputs=[(ids[i : i + 32],) for i in range(0, len(ids), 32)], num_heads=12,
                          hidden_size=384, min_cosine=0.995)  # fmt: skip
    return r.path, {"fused_ops": r.fused_ops, "float_nodes": list(r.float_nodes), "attempts": r.attempts}


def measure(files: dict[str, Path], data: ds.DataBundle, seq: int, args: argparse.Namespace) -> list[dict]:
    """Fidelity of each ONNX file's embeddings to the fp32 file's, and latency interleaved at batch 1 and 32."""
    rows = []
    ids = getattr(data.test.dataset, "ids")  # noqa: B009 (the sentence set's token tensor)
    ref = ort_embed(files["ort_fp32"], ids)
    fid = {name: embedding_fidelity(ort_embed(path, ids), ref, pairs=data.info["pairs"])
           for name, path in files.items()}  # fmt: skip
    for batch in BATCHES:
        times = ds.interleave(dict(files), example_input=speed_ids(batch, seq), threads=THREADS,
                              rounds=args.rounds if batch == 1 else max(2, args.rounds // 2),
                              block=5 if batch == 1 else 2)  # fmt: skip
        base = times["ort_fp32"].median_ms
        for name in files:
            rows.append({"seq": seq, "batch": batch, "variant": name, "median_ms": round(times[name].median_ms, 3),
                         "speedup_vs_ort_fp32": round(base / times[name].median_ms, 3),
                         "fidelity": {k: round(v, 4) for k, v in fid[name].items()}})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/transformer_encoder.json")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variants", default="ort_opt_int8,ds_fused_int8,tome,prune,student3,heads",
                        help="comma-separated: ort_opt_int8, ds_fused_int8, tome, prune, student3, heads (ort_fp32 "
                             "always)")
    parser.add_argument("--distill-size", type=int, default=6144, help="distillation texts for the pruned heads")
    parser.add_argument("--heads-epochs", type=int, default=2)
    parser.add_argument("--heads-lr", type=float, default=1e-4)
    args = parser.parse_args()
    result = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.json)
    for row in result["rows"]:
        f = row["fidelity"]
        print(f"seq {row['seq']:3d} batch {row['batch']:2d} {row['variant']:13s} {row['median_ms']:9.2f} ms "
              f"x{row['speedup_vs_ort_fp32']:.2f}  cos {f['cosine_mean']:.4f}/{f['cosine_min']:.4f} "
              f"nn {f['nn_agreement']:.3f} rho {f['spearman']:.3f} para {f['paraphrase_accuracy']:.3f}")
    for key in ("student", "heads"):
        if key in result:
            print(f"{key}:", json.dumps(result[key]))
    print("load before/after:", result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
