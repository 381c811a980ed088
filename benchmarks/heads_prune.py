"""Head + FFN pruning of all-MiniLM-L6-v2, recovered by distillation under a CPU budget (issue 17, session 11).

Steps, run one at a time on a shared machine (each writes a JSON; the pruned models are saved under --out):

    python benchmarks/heads_prune.py probe --policies "heads=1/3,ffn=0.25;heads=1/3,flops=0.278,calib=broad"
        fidelity right after pruning (held-out distillation-mix text and the evaluation sentences at seq 32), the
        share of projection weights removed, the heads kept per layer; each pruned model saved (PREFIX-<i>.pt/.json)
    python benchmarks/heads_prune.py speed --from /tmp/h11/kd /tmp/h11/probe-1 [--seqs 32,128] [--optimize 32]
        ONNX Runtime latency (1 thread, thread CPU time, files round-robin, order reversed every round: ratios to the
        teacher's ORT fp32 file in the same run), plain exports and ORT's transformer optimizer (fp32, no int8)
    python benchmarks/heads_prune.py distill --policy "heads=1/3,ffn=0.4,calib=broad" --cpu 600 --out /tmp/h11/kd
        prune, then ``deepslim.train.student.distill_encoder`` on the broad corpus (embeddings + every layer's
        hidden states, layer map = identity); the word embeddings (30,522 x 384, half the weights, unpruned) frozen
        (then fidelity at seq 32 / 128 / held-out text); speed ``--from`` the saved model gives ONNX fidelity + speed
    python benchmarks/heads_prune.py measure --from /tmp/h11/kd
        PyTorch fidelity of a saved model again (seq 32, 128, held-out text)
    python benchmarks/heads_prune.py kdprobe --policy "heads=1/3,ffn=0.4,calib=broad,refit=0" --cpu 120 \
            --variants "lr=1.5e-4;lr=5e-4,batch_size=16"
        short distillations of one pruned model (``--policy``, or a saved one ``--from``), one per variant
        (EncoderKDConfig fields, e.g. ``precision=bf16``, and ``passages``: the share of packed 128-token passages
        added to the text, see ``with_passages``), each from the same weights on the same seeded batches under the
        same CPU budget; ``--precision bf16``: every variant's passes under CPU autocast bfloat16 unless it says
    python benchmarks/heads_prune.py staged --policy "heads=1/3,calib=broad" --then "ffn=0.35,calib=broad" \
            --cpu 600 --split 0.33 --lr 5e-4 --out /tmp/h13/staged
        gradual pruning in one budget: the heads, distillation, then the hidden units ranked on the distilled student
    python benchmarks/heads_prune.py steptime --from /tmp/h14/p-0 --variants "precision=fp32;precision=bf16" \
            --rounds 3 --steps-each 10
        CPU seconds per distillation step for each setting, interleaved on the same batches
    python benchmarks/heads_prune.py lengths [--passages 0.05]
        token counts of the distillation text, of the batches a run draws from it and of the evaluation sets

A policy: ``heads`` / ``ffn`` / ``flops`` (HeadPruneConfig's head_ratio / ffn_ratio / flops_ratio; fractions like 1/3
allowed), ``calib`` (``doc``: 512 stdlib docstring sentences at seq 32; ``broad``: 512 texts of the broad
distillation mix, what transformer_encoder.py uses; ``passages``: 512 packed 128-token passages of the mix;
``mixed``: 256 broad texts, then 256 passages), ``batches`` (of 32; 8 by default, so ``mixed`` needs 16),
``refit`` (0/1), ``scale`` (0/1: per-unit scales fitted at each LayerNorm), ``groups`` (runs of calibration batches
ranked apart, each unit keeping its largest share), ``global`` (0: every layer loses the same share of heads and of
hidden units; 1, the default: ranked across layers). Distillation text is never the
evaluation set.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, write_json_atomic
from deepslim.compress.prune.heads import HeadPruneConfig, apply_block, find_blocks, prune_heads_
from deepslim.errors import ConfigError
from deepslim.models.hf import SentenceEncoder, tokenize
from deepslim.tasks.similarity import embedding_fidelity, sentence_fidelity
from deepslim.train.student import EncoderKDConfig, distill_encoder
from transformer_encoder import (
    Texts,
    cpu_rows,
    distill_texts,
    export,
    heldout_fidelity,
    ort_embed,
    prefixed,
)

KEYS = {"heads": "head_ratio", "ffn": "ffn_ratio", "flops": "flops_ratio", "batches": "batches", "refit": "refit",
        "global": "global_ranking", "scale": "scale", "groups": "groups"}


def parse_policy(text: str) -> tuple[HeadPruneConfig, str]:
    """``heads=1/3,ffn=0.25,calib=broad`` -> (HeadPruneConfig, calibration text)."""
    kw: dict[str, Any] = {}
    calib = "doc"
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key == "calib":
            calib = value
        elif key in ("batches", "groups"):
            kw[KEYS[key]] = int(value)
        elif key in ("refit", "global", "scale"):
            kw[KEYS[key]] = bool(int(value))
        else:
            kw[KEYS[key]] = float(Fraction(value))
    return HeadPruneConfig(**kw), calib


def calibration(teacher: torch.nn.Module, texts: Texts, which: str, n: int = 512) -> list[dict[str, torch.Tensor]]:
    """Batches of 32 for importance and refit: docstring sentences at seq 32 (``doc``), broad-mix texts cut to their
    longest (``broad``; texts[1:] are the mix's token ids and mask, in the mix's shuffled order), 128-token passages
    packed from the mix (``passages``, :func:`packed`), or ``mixed``: the first n/2 broad texts, then n/2 passages
    (with the policy's ``groups=2`` each half is ranked on its own and the unit keeps its larger share)."""
    if which == "doc":
        ids, mask = tokenize(teacher, texts[0][:n], seq_len=32)
    elif which == "passages":
        ids = packed(texts, n)
        mask = torch.ones_like(ids, dtype=texts[2].dtype)
    elif which == "mixed":
        long = packed(texts, n // 2)
        ids = torch.cat([texts[1][: n // 2], long])
        mask = torch.cat([texts[2][: n // 2], torch.ones_like(long, dtype=texts[2].dtype)])
    elif which == "broad":
        ids, mask = texts[1][:n], texts[2][:n]
    else:
        raise SystemExit(f"calib is doc, broad, passages or mixed, not {which!r}")
    out = []
    for i in range(0, n, 32):
        width = int(mask[i : i + 32].sum(1).max())
        out.append({"input_ids": ids[i : i + 32, :width], "attention_mask": mask[i : i + 32, :width]})
    return out


def with_passages(texts: Texts, share: float, seed: int = 0) -> Texts:
    """``texts`` plus packed passages (:func:`packed`) making ``share`` of the whole. The texts stay first (the
    calibration reads texts[1][:512]); no new text, only long inputs, which the mix has few of."""
    docs, ids, mask = texts
    if not 0 <= share < 1:
        raise SystemExit(f"the passage share must be in [0, 1), got {share}")
    rows = packed(texts, round(share * len(ids) / (1 - share)), seed)
    return docs, torch.cat([ids, rows]), torch.cat([mask, torch.ones_like(rows, dtype=mask.dtype)])


def packed(texts: Texts, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows of token ids as wide as the texts' rows: runs of consecutive training texts (in a seeded order)
    joined into one ``[CLS] … [SEP]`` row as long as the rows allow (WordPiece splits at whitespace, so this is what
    tokenizing the texts joined by spaces gives, cut at the width)."""
    _, ids, mask = texts
    width = ids.shape[1]
    counts = mask.sum(1).tolist()
    rows, run = [], []
    for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + 13)).tolist():
        run += ids[i, 1 : counts[i] - 1].tolist()
        if len(run) >= width - 2:
            rows.append([int(ids[i, 0]), *run[: width - 2], int(ids[i, counts[i] - 1])])
            run = []
            if len(rows) == n:
                break
    if len(rows) < n:
        raise SystemExit(f"{len(ids)} texts make {len(rows)} passages of {width} tokens, not {n}: lower the share")
    return torch.tensor(rows, dtype=ids.dtype).reshape(n, width)


def word_embeddings(model: torch.nn.Module) -> torch.Tensor:
    """The word-embedding weight of ``model``, a SentenceEncoder (the MiniLM teacher or a copy of it)."""
    if not isinstance(model, SentenceEncoder):
        raise TypeError(f"expected a SentenceEncoder (a copy of the MiniLM teacher), got {type(model).__name__}")
    return model.encoder.embeddings.word_embeddings.weight


def prune(teacher: torch.nn.Module, policy: str, texts: Texts) -> tuple[torch.nn.Module, dict[str, Any]]:
    config, calib = parse_policy(policy)
    student = copy.deepcopy(teacher)
    c0, w0 = time.process_time(), time.monotonic()
    plan = prune_heads_(student, config, calibration(teacher, texts, calib))
    before, after = plan.macs()
    heads = [b.keep for b in plan.blocks if b.unit == "heads"]
    ffn = [b.keep for b in plan.blocks if b.unit == "hidden units"]
    return student.eval(), {"policy": policy, "config": config.to_dict(), "calib": calib,
                            "prune_cpu_s": round(time.process_time() - c0, 1),
                            "prune_wall_s": round(time.monotonic() - w0, 1), "heads": plan.heads(),
                            "heads_per_layer": heads, "ffn_per_layer": ffn,
                            "weights_removed": round(1 - after / before, 4),
                            "kept": {b.name: list(b.kept) for b in plan.blocks}}  # fmt: skip


def save(model: torch.nn.Module, info: dict, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), prefixed(prefix, ".pt"))
    prefixed(prefix, ".json").write_text(json.dumps(info, indent=1, default=str) + "\n")


def load(teacher: torch.nn.Module, prefix: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    info = json.loads(prefixed(prefix, ".json").read_text())
    student = copy.deepcopy(teacher)
    for b in find_blocks(student)[0]:
        if len(info["kept"][b.name]) < b.units:
            apply_block(b, torch.tensor(info["kept"][b.name], dtype=torch.long))
    student.load_state_dict(torch.load(prefixed(prefix, ".pt")))
    return student.eval(), info


def fidelity(student: torch.nn.Module, teacher: torch.nn.Module, held: Texts, data32: Any,
             data128: Any | None = None) -> dict[str, Any]:  # fmt: skip
    out = {"heldout": heldout_fidelity(student, teacher, held), "seq32": sentence_fidelity(student, teacher, data32)}
    if data128 is not None:
        out["seq128"] = sentence_fidelity(student, teacher, data128)
    return {k: {m: round(v, 4) for m, v in f.items()} for k, f in out.items()}


def pin_heads(path: Path) -> Path:
    """A copy of an exported BERT whose per-head reshapes name their head count: Hugging Face reshapes q/k/v to
    (batch, seq, -1, head_size), and ORT's transformer optimizer reads the head count from that shape (or takes one
    number for all layers), so pruned layers of different widths would not fuse. The count is the projection's
    width over head_size, read from the MatMul weight feeding the reshape."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}

    def weight_width(name: str) -> int | None:
        node = producer.get(name)
        while node is not None and node.op_type in ("Add", "MatMul"):
            if node.op_type == "MatMul":
                w = inits.get(node.input[1])
                return None if w is None else int(w.shape[-1])
            node = next((producer[x] for x in node.input if x in producer and producer[x].op_type in ("Add", "MatMul")),
                        None)  # fmt: skip
        return None

    pinned = 0
    for n in g.node:
        concat = producer.get(n.input[1]) if n.op_type == "Reshape" and len(n.input) > 1 else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        third, fourth = (consts.get(x, inits.get(x)) for x in concat.input[2:])
        width = weight_width(n.input[0])
        if third is None or fourth is None or int(third.reshape(-1)[0]) != -1 or width is None:
            continue
        name = f"pinned_heads_{pinned}"
        g.initializer.append(numpy_helper.from_array(np.array([width // int(fourth.reshape(-1)[0])], np.int64), name))
        concat.input[2] = name
        pinned += 1
    out = path.with_name(path.stem + "-pinned.onnx")
    onnx.save(model, str(out))
    return out


def optimized(path: Path) -> tuple[Path, dict[str, int]]:
    """ORT's transformer optimizer on an fp32 file (no quantization); heads and widths read from the graph."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(pin_heads(path)), model_type="bert", num_heads=0, hidden_size=0)
    out = path.with_name(path.stem + "-opt.onnx")
    opt.save_model_to_file(str(out))
    return out, {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def session_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime runs for ``path`` after its own in-session optimizations (which
    fuse attention only where q/k/v are square: an unpruned layer)."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_name(path.stem + "-session.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {k: v for k, v in sorted(ops.items()) if k in ("Attention", "MatMul", "FusedMatMul", "Gemm", "Softmax",
                                                          "SkipLayerNormalization", "BiasGelu", "Gelu")}  # fmt: skip


def speed(args: argparse.Namespace, teacher: torch.nn.Module, result: dict[str, Any]) -> None:
    students = {f"s{i}": load(teacher, Path(p))[0] for i, p in enumerate(args.from_)}
    data = {32: ds.load_data("sentences", seq_len=32, train_size=64),
            128: ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)}
    result["students"] = {f"s{i}": str(p) for i, p in enumerate(args.from_)}
    result["fused"], result["rows"] = {}, []
    with tempfile.TemporaryDirectory() as work:
        for seq in (int(s) for s in args.seqs.split(",")):
            files = {"ort_fp32": export(teacher, Path(work) / f"t-{seq}.onnx", seq)}
            for name, model in students.items():
                files[name] = export(model, Path(work) / f"{name}-{seq}.onnx", seq)
            fuse = seq in {int(s) for s in args.optimize.split(",") if s}
            if fuse:
                for name in list(files):
                    files[name + "_opt"], result["fused"][f"{name}_opt@{seq}"] = optimized(files[name])
            result.setdefault("session_ops", {}).update({f"{k}@{seq}": session_ops(p) for k, p in files.items()})
            ids = getattr(data[seq].test.dataset, "ids")  # noqa: B009
            ref = ort_embed(files["ort_fp32"], ids)
            fid = {k: embedding_fidelity(ort_embed(p, ids), ref, pairs=data[seq].info["pairs"])
                   for k, p in files.items()}  # fmt: skip
            if fuse:  # the fused file computes what its plain export computes
                for name in [k for k in files if not k.endswith("_opt")]:
                    same = embedding_fidelity(ort_embed(files[name + "_opt"], ids), ort_embed(files[name], ids))
                    result["fused"][f"{name}_opt@{seq}"]["cosine_to_plain_min"] = round(same["cosine_min"], 6)
            result["rows"] += cpu_rows(files, fid, {}, seq, args.rounds)
    result["summary"] = speed_summary(result["rows"], result["students"])
    print(json.dumps(result["summary"]), flush=True)


def speed_summary(rows: list[dict[str, Any]], students: dict[str, str]) -> dict[str, Any]:
    """Per saved model (keyed by its prefix): the thread-CPU speed-up over the teacher's ORT fp32 file in every
    (sequence, batch) cell timed, the wall ratio beside it, and the weakest cell (what a speed target is judged on)."""
    out: dict[str, Any] = {}
    for name, prefix in students.items():
        cells = {f"s{r['seq']}_b{r['batch']}": r for r in rows if r["variant"] == name}
        if not cells:
            raise ValueError(f"no timed rows for {name} ({prefix})")
        low = min(cells, key=lambda c: cells[c]["speedup_vs_ort_fp32"])
        out[prefix] = {"speedup": {c: r["speedup_vs_ort_fp32"] for c, r in cells.items()},
                       "speedup_wall": {c: r["speedup_wall"] for c, r in cells.items()},
                       "weakest": {"cell": low, "speedup": cells[low]["speedup_vs_ort_fp32"]}}  # fmt: skip
    return out


def distill(args: argparse.Namespace, teacher: torch.nn.Module, texts: Texts, held: Texts, data32: Any,
            result: dict[str, Any]) -> None:  # fmt: skip
    student, info = prune(teacher, args.policy, texts)
    info["before"] = fidelity(student, teacher, held, data32)
    if args.freeze_embeddings:
        word_embeddings(student).requires_grad_(False)
    given = {"cpu_seconds": args.cpu, "lr": args.lr, "wall_seconds": args.wall, "seed": args.seed,
             "precision": args.precision, "batch_size": args.batch_size}  # fmt: skip
    config = EncoderKDConfig(**(given | kd_spec(args.kd)))
    info["kd_config"] = config.to_dict() | {"freeze_word_embeddings": args.freeze_embeddings,
                                            "passages": args.passages}  # fmt: skip
    kd_texts = with_passages(texts, args.passages, args.seed) if args.passages else texts
    info["kd"] = distill_encoder(student, teacher, kd_texts[1], kd_texts[2], config) | {"texts": len(kd_texts[1])}
    save(student, info, Path(args.out))
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    info["after"] = fidelity(student, teacher, held, data32, data128)
    save(student, info, Path(args.out))
    result["student"] = {k: v for k, v in info.items() if k != "kept"}


def staged(args: argparse.Namespace, teacher: torch.nn.Module, texts: Texts, held: Texts, data32: Any,
           result: dict[str, Any]) -> None:  # fmt: skip
    """Gradual pruning inside one CPU budget: ``--policy`` (the heads), distil ``--split`` of ``--cpu``, then
    ``--then`` (the hidden units) ranked on the partly distilled student, distil the rest on the batches a single
    run would draw next (a warm restart of the schedule). The kept units are composed, so ``load`` reads the result."""
    student, info = prune(teacher, args.policy, texts)
    info["before"] = fidelity(student, teacher, held, data32)
    word_embeddings(student).requires_grad_(not args.freeze_embeddings)
    first = EncoderKDConfig(cpu_seconds=args.cpu * args.split, lr=args.lr, seed=args.seed, precision=args.precision,
                            batch_size=args.batch_size)  # fmt: skip
    info["kd1"] = distill_encoder(student, teacher, texts[1], texts[2], first)
    info["middle"] = fidelity(student, teacher, held, data32)
    kept = info.pop("kept")
    c0 = time.process_time()
    second, calib = parse_policy(args.then)
    plan = prune_heads_(student, second, calibration(student, texts, calib))
    info["prune2_cpu_s"] = round(time.process_time() - c0, 1)
    info["kept"] = {b.name: [kept[b.name][i] for i in b.kept] for b in plan.blocks}
    info["heads_per_layer"] = [b.keep for b in plan.blocks if b.unit == "heads"]
    info["ffn_per_layer"] = [b.keep for b in plan.blocks if b.unit == "hidden units"]
    info["pruned2"] = fidelity(student, teacher, held, data32)
    rest = args.cpu - info["kd1"]["cpu_s"] - info["prune2_cpu_s"]
    config = EncoderKDConfig(cpu_seconds=rest, lr=args.lr, seed=args.seed, skip_batches=info["kd1"]["steps"],
                             precision=args.precision, batch_size=args.batch_size)  # fmt: skip
    info["kd_config"] = config.to_dict() | {"freeze_word_embeddings": args.freeze_embeddings, "then": args.then}
    info["kd"] = distill_encoder(student, teacher, texts[1], texts[2], config)
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    info["after"] = fidelity(student, teacher, held, data32, data128)
    save(student, info, Path(args.out))
    result["student"] = {k: v for k, v in info.items() if k != "kept"}


def kd_spec(text: str) -> dict[str, Any]:
    """``lr=5e-4,batch_size=16,layer_weights=1:1:2,precision=bf16,fused=false`` -> EncoderKDConfig keyword arguments
    (``:`` separates a tuple; ``precision`` stays a word; ``fused`` and ``dropout`` are true or false)."""
    kw: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key == "precision":
            kw[key] = value
        elif key in ("fused", "dropout"):
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"{key} must be true or false, got {value!r}")
            kw[key] = value.lower() == "true"
        elif ":" in value:
            kw[key] = tuple(float(v) for v in value.split(":"))
        else:
            number = float(Fraction(value))
            kw[key] = int(number) if key in ("batch_size", "steps", "skip_batches", "relation_heads") else number
    return kw


def kdprobe(args: argparse.Namespace, teacher: torch.nn.Module, texts: Texts, held: Texts, data32: Any,
            result: dict[str, Any]) -> None:  # fmt: skip
    """Every variant on every pruned model (``--policy``, or each saved ``--from``; with several, the probes are
    keyed ``PREFIX: variant``)."""
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    result["probes"], bases = {}, {}
    if args.from_:
        bases = {str(p): load(teacher, Path(p)) for p in args.from_}
    else:
        bases[""] = prune(teacher, args.policy, texts)
        bases[""][1]["before"] = fidelity(bases[""][0], teacher, held, data32)
        print(json.dumps(bases[""][1]["before"]), flush=True)
    for info in (b[1] for b in bases.values()):
        info.pop("kept", None)
    result["pruned"] = bases[""][1] if "" in bases else {k: b[1] for k, b in bases.items()}
    for name, (base, _) in bases.items():
        for spec in filter(None, (v.strip() for v in args.variants.split(";"))):
            key = f"{name}: {spec}" if len(bases) > 1 else spec
            student, result["probes"][key] = probe_one(args, base, teacher, texts, spec)
            result["probes"][key]["after"] = fidelity(student, teacher, held, data32, data128)
            write_json_atomic(result, args.json)
            print(key, json.dumps(result["probes"][key]["kd"]), json.dumps(result["probes"][key]["after"]),
                  flush=True)  # fmt: skip


def probe_one(args: argparse.Namespace, base: torch.nn.Module, teacher: torch.nn.Module, texts: Texts,
              spec: str) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
    """One short distillation of a copy of ``base``: (the distilled copy, what the run did)."""
    student = copy.deepcopy(base)
    word_embeddings(student).requires_grad_(not args.freeze_embeddings)
    kw = kd_spec(spec)
    share = kw.pop("passages", 0.0)
    config = EncoderKDConfig(**({"cpu_seconds": args.cpu, "lr": args.lr, "seed": args.seed,
                                 "precision": args.precision, "batch_size": args.batch_size} | kw))  # fmt: skip
    kd_texts = with_passages(texts, share, args.seed) if share else texts
    w0, load0 = time.monotonic(), os.getloadavg()
    kd = distill_encoder(student, teacher, kd_texts[1], kd_texts[2], config) | {"texts": len(kd_texts[1])}
    return student, {"kd_config": config.to_dict() | {"passages": share}, "kd": kd,
                     "wall_s": round(time.monotonic() - w0, 1), "load": [load0, os.getloadavg()]}  # fmt: skip


def steptime(args: argparse.Namespace, teacher: torch.nn.Module, texts: Texts) -> dict[str, Any]:
    """CPU seconds per distillation step of the saved model ``--from`` for each precision and batch size
    (``--variants``: ``;``-separated kd_spec settings, e.g. ``precision=bf16,batch_size=64``): ``--rounds`` rounds,
    each running every setting ``--steps-each`` steps from a fresh copy on the first batches of the seeded stream
    (the same batches for every setting of a batch size), the settings' order reversed every other round; the
    median of the rounds. Process CPU time of the whole distill_encoder call (one thread: the thread's own), read
    here: the run's own ``cpu_s`` is rounded to 0.1 s, 12.5 ms a step at 8 steps. The first round warms up and is
    dropped. ``--precision`` and ``--batch-size`` are the settings' defaults."""
    import statistics

    base, _ = load(teacher, Path(args.from_[0]))
    specs = [v.strip() for v in args.variants.split(";") if v.strip()]
    times: dict[str, list[float]] = {spec: [] for spec in specs}
    for r in range(args.rounds + 1):
        for spec in specs if r % 2 == 0 else specs[::-1]:
            student = copy.deepcopy(base)
            word_embeddings(student).requires_grad_(not args.freeze_embeddings)
            config = steptime_config(args, spec)
            c0 = time.process_time()
            kd = distill_encoder(student, teacher, texts[1], texts[2], config)
            if r > 0:
                times[spec].append((time.process_time() - c0) / kd["steps"])
    out = {}
    for spec, t in times.items():
        batch = steptime_config(args, spec).batch_size
        out[spec] = {"cpu_s_per_step": round(statistics.median(t), 4), "rounds": [round(x, 4) for x in t],
                     "cpu_ms_per_text": round(1000 * statistics.median(t) / batch, 3)}  # fmt: skip
        print(spec, json.dumps(out[spec]), flush=True)
    return out


def steptime_config(args: argparse.Namespace, spec: str) -> EncoderKDConfig:
    """A steptime setting: ``--lr``, ``--seed``, ``--precision`` and ``--batch-size`` unless ``spec`` names them,
    ``--steps-each`` steps, no CPU bound."""
    kw = {"lr": args.lr, "seed": args.seed, "precision": args.precision, "batch_size": args.batch_size}
    return EncoderKDConfig(**(kw | kd_spec(spec) | {"cpu_seconds": None, "steps": args.steps_each}))


def lengths(texts: Texts, data32: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Token counts of the distillation text (``--passages`` added), of the batches a 1,200-step run draws from it
    (batch 32, dynamic padding) and of the evaluation sets: how often the student sees an input as long as the
    sequence-128 passages."""
    from deepslim.train.student import length_batches

    ids, mask = with_passages(texts, args.passages, args.seed)[1:] if args.passages else texts[1:]
    stream = length_batches(ids, mask, 32, seed=args.seed)
    widths = torch.tensor([next(stream)[0].shape[1] for _ in range(1200)], dtype=torch.float)
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)

    def summary(n: torch.Tensor) -> dict[str, Any]:
        n = n.float()
        return {"n": len(n), "mean": round(float(n.mean()), 2), "min": int(n.min()), "max": int(n.max()),
                "quantiles": {q: int(n.quantile(q)) for q in (0.1, 0.5, 0.9, 0.99)},
                "share_ge": {t: round(float((n >= t).float().mean()), 4) for t in (32, 64, 100)}}  # fmt: skip

    return {"texts": summary(mask.sum(1)), "batch_widths": summary(widths),
            "token_share_of_batches_ge_64": round(float(widths[widths >= 64].sum() / widths.sum()), 4),
            "eval_seq32": summary((getattr(data32.test.dataset, "ids") != 0).sum(1)),  # noqa: B009
            "eval_seq128": summary((getattr(data128.test.dataset, "ids") != 0).sum(1))}  # noqa: B009


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("probe", "speed", "distill", "measure", "kdprobe", "staged", "lengths",
                                         "steptime"))  # fmt: skip
    parser.add_argument("--json", required=True)
    parser.add_argument("--out", default="/tmp/h11/probe", help="prefix of the saved models")
    parser.add_argument("--policies", default="heads=1/3,ffn=0.25", help="probe: policies separated by ;")
    parser.add_argument("--policy", default="heads=1/3,ffn=0.25", help="distill: one policy")
    parser.add_argument("--variants", default="lr=1.5e-4", help="kdprobe: EncoderKDConfig fields per probe, "
                        "separated by ;")
    parser.add_argument("--from", dest="from_", nargs="*", default=[], help="speed/measure: saved model prefixes")
    parser.add_argument("--seqs", default="32")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--optimize", default="32", help="sequence lengths at which ORT transformer-optimizer fp32 "
                        "files are timed too (comma-separated; empty: none)")
    parser.add_argument("--kd", default="", help="distill: more EncoderKDConfig fields, as a kdprobe variant "
                        "(e.g. warmup=0.02,layer_weights=1:1:1:1:2:4); they override --lr, --batch-size and the rest")
    parser.add_argument("--then", default="ffn=0.35,calib=broad", help="staged: the second pruning")
    parser.add_argument("--split", type=float, default=1 / 3, help="staged: the share of --cpu before --then "
                        "(the second pruning's CPU time comes out of the rest)")
    parser.add_argument("--cpu", type=float, default=600.0)
    parser.add_argument("--wall", type=float, default=None)
    parser.add_argument("--lr", type=float, default=1.5e-4)
    parser.add_argument("--freeze-embeddings", type=int, default=1)
    parser.add_argument("--passages", type=float, default=0.0, help="distill: the share of packed 128-token "
                        "passages added to the distillation text (kdprobe: the variant key passages=)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="distill/kdprobe/staged: "
                        "the distillation passes' arithmetic (EncoderKDConfig.precision; kdprobe: a variant's "
                        "precision= overrides it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="distill/staged/kdprobe/steptime: texts per "
                        "step (a kdprobe or steptime setting's batch_size= overrides it)")
    parser.add_argument("--steps-each", type=int, default=10, help="steptime: steps per setting and round")
    args = parser.parse_args(argv)
    if args.mode in ("measure", "steptime") and not args.from_:
        parser.error(f"{args.mode} needs --from PREFIX (the saved model)")
    if args.mode in ("kdprobe", "steptime", "distill"):
        specs = [args.kd] if args.mode == "distill" else args.variants.split(";")
        for spec in filter(None, (v.strip() for v in specs)):
            try:  # every variant checked before any work: a bad one is refused in one line (exit 2), not later
                kw = kd_spec(spec)
                if args.mode != "distill":  # distill's passages are --passages
                    kw.pop("passages", None)
                EncoderKDConfig(**({"cpu_seconds": args.cpu, "precision": args.precision} | kw))
            except (ConfigError, ValueError, TypeError, ZeroDivisionError) as exc:
                parser.error(f"{'--kd' if args.mode == 'distill' else '--variants'} {spec!r}: {exc}")
    result = result_header("heads_prune", 1) | {"mode": args.mode, "argv": vars(args) | {"from_": args.from_}}
    c0, w0 = time.process_time(), time.monotonic()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    if args.mode == "speed":
        speed(args, teacher, result)
    else:
        texts, held, result["distill_corpus"] = distill_texts(teacher, "broad", seed=args.seed)
        data32 = ds.load_data("sentences", seq_len=32, train_size=64)
        if args.mode == "probe":
            result["probes"] = []
            data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
            for i, policy in enumerate(p for p in args.policies.split(";") if p.strip()):
                student, info = prune(teacher, policy, texts)
                info["fidelity"] = fidelity(student, teacher, held, data32, data128)
                save(student, info, Path(f"{args.out}-{i}"))
                result["probes"].append({k: v for k, v in info.items() if k != "kept"})
                write_json_atomic(result, args.json)
                print(json.dumps(result["probes"][-1]), flush=True)
        elif args.mode == "distill":
            distill(args, teacher, texts, held, data32, result)
        elif args.mode == "kdprobe":
            kdprobe(args, teacher, texts, held, data32, result)
        elif args.mode == "staged":
            staged(args, teacher, texts, held, data32, result)
        elif args.mode == "steptime":
            result["steptime"] = steptime(args, teacher, texts)
        elif args.mode == "lengths":
            result["lengths"] = lengths(texts, data32, args)
        else:
            data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
            student, info = load(teacher, Path(args.from_[0]))
            result["student"] = {k: v for k, v in info.items() if k != "kept"}
            result["after"] = fidelity(student, teacher, held, data32, data128)
    result["process_cpu_s"], result["wall_s"] = round(time.process_time() - c0, 1), round(time.monotonic() - w0, 1)
    result["load_after"] = os.getloadavg()
    write_json_atomic(result, args.json)
    print(json.dumps({k: v for k, v in result.items() if k not in ("argv",)}, default=str)[:6000])


if __name__ == "__main__":
    main()
