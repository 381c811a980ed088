"""all-MiniLM-L6-v2 in ONNX Runtime: fp32, ORT's own transformer optimizer + dynamic int8, and deepslim's token
merging (ToMe, also distilled with the merging in place), token pruning, head + FFN pruning and a 3-layer student
(both distilled under a CPU budget, ``deepslim.train.student``) — latency at batch 1 and 32, sequence 32 and 128,
next to fidelity to the fp32 embeddings on the built-in sentence set (``load_data("sentences")``; at sequence 128
the ~100-token passages, ``passages=True``).

Every file is exported with the TorchScript ONNX exporter (``dynamo=False``: it keeps the eager attention pattern
that ORT's optimizer fuses), takes ``input_ids`` only (mask = ids != [PAD]) and has a dynamic batch; the token
reducers are exported per sequence length (their merge counts are fixed). Latency inputs are full-length token ids
(no padding, so no reduction gets padding for free); files are timed round-robin with ``deepslim.interleave``
(own processes, spinning off, order reversed every round). Fidelity is computed from each ONNX file's own outputs.
The load average is recorded before and after: the machine is shared, and a load above its core count makes the
numbers noisy.

    python benchmarks/transformer_encoder.py [--json benchmarks/results/transformer_encoder.json] [--rounds 3]
        [--variants ort_opt_int8,ds_fused_int8,ds_fused_int8_all,ds_mixed_int8,ds_split_in,tome,tome_big,prune,tome_kd,
                    student3,heads]
        [--heads-cpu 600] [--student-cpu 900] [--tome-cpu 900] [--heads-from PREFIX] [--student-from PREFIX]
        [--tome-from PREFIX] [--student-precision {fp32,bf16}] [--student-passages SHARE] [--student-init PREFIX]

The int8 variants (``ort_opt_int8``, ``ds_*``) are built in ``_fused_int8.py``. Distilled models are saved next to
the JSON (``.heads.pt``/``.json`` and alike) and reused with ``--*-from``, so a long distillation and the measurement
can run separately on a shared machine.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
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
from _common import result_header, write_json_atomic
from _fused_int8 import int8_files
from deepslim.compress.prune import HeadPruneConfig, prune_heads_
from deepslim.compress.prune.heads import apply_block, find_blocks
from deepslim.compress.tokens import (
    MergeTokensConfig,
    PruneTokensConfig,
    drop_layers_,
    merge_tokens_,
    prune_tokens_,
)
from deepslim.data.sentences import training_sentences, word_salad
from deepslim.data.text_corpus import CorpusConfig, build_corpus
from deepslim.models.hf import IdsOnly, SentenceEncoder, tokenize, tokenizer_for
from deepslim.tasks.similarity import embed, embedding_fidelity, sentence_fidelity
from deepslim.train.student import PRECISIONS, EncoderKDConfig, distill_encoder

THREADS = 1
SEQS = (32, 128)
BATCHES = (1, 32)
TOME_R = {32: 2, 128: 8}
KEEP = {32: 0.9, 128: 0.9}
TOME_KD_R = {32: 4, 128: 16}  # ToMe distilled with merging in place (at sequence 128)
STUDENT_KEEP = [0, 3, 5]
HELDOUT = 512  # distillation-mix texts held out of training (fit on unseen text of the same mix)
Texts = tuple[list[str], torch.Tensor, torch.Tensor]  # docstring sentences, token ids, attention mask
# a third of the heads and 35 % of the hidden units, ranked across layers (every layer losing 4 of 12 heads and 30 % of
# its units: s32 0.805 before distillation, ranked: 0.897): the least FFN share whose weakest ORT cell kept a margin
# over 1.3x (FFN 0.35: 1.41x; 0.3: 1.32-1.35x, 0.25: 1.24x; session 13, H), and more of the teacher left to distil
# from than 0.4 (s32 0.885 against 0.864 right after pruning). No least-squares refit: on MiniLM it lowered the
# pruned model's cosine from 0.864 to 0.639 (s32, session 12, H). More heads for fewer hidden units at the same speed
# does not beat it: 5/12 of the heads + FFN 0.3 distilled 600 CPU-s reached s32 0.9725 / s128 0.9431 (this one 0.971 /
# 0.944) at the same speed (1.45-1.53x in two runs, side by side); half the heads cost s128 (session 14, H). Neither
# per-unit scales fitted at each LayerNorm (scale=True: s32 0.886 -> 0.894, s128 0.763 -> 0.804 right after pruning,
# but 0.953 / 0.899 against 0.957 / 0.905 unscaled after 120 CPU-s of distillation) nor importance calibrated on half
# 128-token passages (s128 +0.004, s32 -0.009 after 120 CPU-s) helps once distilled (session 15, H)
HEADS = HeadPruneConfig(head_ratio=1 / 3, ffn_ratio=0.35, refit=False)
# the head-pruned student's distillation passes under CPU autocast bfloat16 in batches of 64 (session 18, H): at batch
# 32 bf16 bought no steps on the pruned model, at 64 it bought 1.37x fp32's; 600 CPU-s gave 1/3 + FFN 0.35 s32 0.9720
# / s128 0.9447 (session 13, fp32 batch 32: 0.971 / 0.944) and 5/12 + FFN 0.3 0.9740 / 0.9447
HEADS_KD: dict[str, Any] = {"precision": "bf16", "batch_size": 64}


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


def distill_texts(teacher: torch.nn.Module, corpus: str = "broad", seed: int = 0) -> tuple[Texts, Texts, dict]:
    """Distillation text, never the evaluation sentences: (training texts, ``HELDOUT`` texts of the same mix held
    out to measure how well the student fits text it did not see, a record of the mix). Both mixes are tokenized to
    128 tokens (``distill_encoder`` pads each batch only to its longest text); the docstring sentences (first of
    each triple) calibrate the head pruning in both.

    ``mix6`` (sessions 6-7): stdlib docstring sentences (shuffled), 4,500 template sentences, 3,000 strings of random
    common vocabulary words (``word_salad``) and 1,000 runs of five docstring sentences (for sequence 128).
    ``broad`` (session 10): :func:`deepslim.data.text_corpus.build_corpus` (WordNet's examples and glosses, fortune
    cookies, Debian package descriptions and READMEs, manual pages, the docstrings of every installed Python package
    and their long descriptions: sentences and passages) plus the same templates and word salad."""
    docs = docstring_sentences()
    random.Random(seed).shuffle(docs)
    extra = training_sentences(4500, seed=seed + 1) + word_salad(tokenizer_for(teacher), 3000, seed=seed + 7)
    record: dict[str, Any] = {"corpus": corpus}
    if corpus == "mix6":
        texts = docs + extra + [" ".join(docs[i : i + 5]) for i in range(0, 5000, 5)]
        record["sources"] = {"stdlib_docstrings": len(docs), "templates_and_salad": len(extra), "runs": 1000}
    else:
        built = build_corpus(CorpusConfig(seed=seed))
        texts = built.texts() + extra
        record |= built.summary() | {"templates_and_salad": len(extra)}
    random.Random(seed + 11).shuffle(texts)
    train, held = texts[:-HELDOUT], texts[-HELDOUT:]
    record["texts"], record["heldout"] = len(train), len(held)
    return (docs, *tokenize(teacher, train, seq_len=128)), (held, *tokenize(teacher, held, seq_len=128)), record


def heldout_fidelity(student: torch.nn.Module, teacher: torch.nn.Module, texts: Texts) -> dict[str, float]:
    """Fidelity on distillation-mix texts the student did not see (batches cut to their longest text)."""
    _, ids, mask = texts
    batches = [{"input_ids": ids[i : i + 32, : int(mask[i : i + 32].sum(1).max())],
                "attention_mask": mask[i : i + 32, : int(mask[i : i + 32].sum(1).max())]}
               for i in range(0, len(ids), 32)]  # fmt: skip
    return embedding_fidelity(embed(student, batches), embed(teacher, batches))


def passages(teacher: torch.nn.Module, docs: list[str], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of 4–7 docstring sentences (~100 tokens) at sequence 128, for distilling a token-merging model."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(docs):
        k = rng.randint(4, 7)
        out.append(" ".join(docs[i : i + k]))
        i += k
    return tokenize(teacher, out, seq_len=128)


def plus_passages(texts: Texts, share: float, seed: int = 0) -> Texts:
    """``texts`` plus packed 128-token passages made of runs of them, ``share`` of the whole (``share`` 0: ``texts``
    as they are): heads_prune's :func:`heads_prune.with_passages` (session 14), imported here when asked for
    (heads_prune imports this module)."""
    if not share:
        return texts
    from heads_prune import with_passages as packed_in

    return packed_in(texts, share, seed)


def passage_share(text: str) -> float:
    """``--student-passages``: a share in [0, 1) (argparse turns the refusal into a usage error, exit 2)."""
    share = float(text)
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError(f"the passage share must be in [0, 1), got {text}")
    return share


def _kd(args: argparse.Namespace, what: str, **kw: Any) -> EncoderKDConfig:
    return EncoderKDConfig(cpu_seconds=getattr(args, f"{what}_cpu"), lr=getattr(args, f"{what}_lr"),
                           wall_seconds=args.wall, seed=args.seed, **kw)  # fmt: skip


def prefixed(prefix: Path, ext: str) -> Path:
    """PREFIX + ext (``Path.with_suffix`` would replace the prefix's own ``.heads``: the info file then was the
    results JSON itself, overwritten at the end of the run)."""
    return prefix.parent / (prefix.name + ext)


def _save(student: torch.nn.Module, info: dict, prefix: Path) -> None:
    torch.save(student.state_dict(), prefixed(prefix, ".pt"))
    prefixed(prefix, ".json").write_text(json.dumps(info, indent=1, default=str) + "\n")


def student_copy(teacher: torch.nn.Module) -> SentenceEncoder:
    """A deep copy of ``teacher``, the SentenceEncoder every variant here starts from."""
    if not isinstance(teacher, SentenceEncoder):
        raise TypeError(f"the teacher is a SentenceEncoder (deepslim.load_model), got {type(teacher).__name__}")
    return copy.deepcopy(teacher)


def head_pruned(teacher: torch.nn.Module, test: ds.DataBundle, args: argparse.Namespace,
                texts: Texts) -> tuple[Any, dict]:  # fmt: skip
    """Prune heads and hidden units (sensitivity of the embeddings on 512 texts of the distillation mix, cut to each
    batch's longest: +0.106 cosine before any distillation over 512 docstring sentences, session 11; no refit, see
    ``HEADS``), then distil embeddings and per-layer hidden states under a CPU budget (``deepslim.train.student``,
    peak learning rate 5e-4, session 12's probes; ``HEADS_KD``: bf16 passes, batches of 64) with the word embeddings
    frozen (half the weights, never pruned)."""
    _, ids, mask = texts
    student = student_copy(teacher)
    calib = []
    for i in range(0, 512, 32):
        width = int(mask[i : i + 32].sum(1).max())
        calib.append({"input_ids": ids[i : i + 32, :width], "attention_mask": mask[i : i + 32, :width]})
    c0 = time.process_time()
    plan = prune_heads_(student, HEADS, calib_data=calib)
    info: dict[str, Any] = {"config": HEADS.to_dict(), "prune_cpu_s": round(time.process_time() - c0, 1),
                            "heads": plan.heads(), "kept": {b.name: list(b.kept) for b in plan.blocks},
                            "before32": sentence_fidelity(student, teacher, test)}  # fmt: skip
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    config = _kd(args, "heads", **HEADS_KD)
    info["kd_config"] = config.to_dict()
    info["kd"] = distill_encoder(student, teacher, ids, mask, config)
    _save(student, info, Path(args.json).with_suffix(".heads"))
    return student.eval(), info


def load_heads(teacher: torch.nn.Module, prefix: Path) -> tuple[Any, dict]:
    """A head-pruned student saved by a previous run: the kept units from ``prefix.json``, weights from ``.pt``."""
    info = json.loads(prefixed(prefix, ".json").read_text())
    student = copy.deepcopy(teacher)
    blocks, _ = find_blocks(student)
    for b in blocks:
        if len(info["kept"][b.name]) < b.units:
            apply_block(b, torch.tensor(info["kept"][b.name], dtype=torch.long))
    student.load_state_dict(torch.load(prefixed(prefix, ".pt")))
    return student.eval(), {k: v for k, v in info.items() if k != "kept"}


def run_precision(info: dict) -> str:
    """The arithmetic of a saved run's distillation passes: recorded beside it (``student3``), or in its
    EncoderKDConfig (student_probes' ``config``, tome_seq128's ``kd_config``); a run saved before bf16 existed
    (session 18) ran in float32."""
    for where in (info, info.get("config", {}), info.get("kd_config", {})):
        if "precision" in where:
            return str(where["precision"])
    return "fp32"


def chain(info: dict) -> dict[str, Any]:
    """What a saved student's training chain has used so far: the batches drawn from the seeded stream (a run that
    continues it skips them) and the distillation CPU seconds, over every run of the chain, in all and per
    precision (``cpu_s_by_precision``: a bf16 step costs ~1.5x fewer CPU seconds than an fp32 one, so chains are
    compared by CPU budget only at the same mix). A chain recorded without the split is counted as float32: bf16
    came in session 18, and that session's two bf16 chains saved before the split (/tmp/s18/main.student3,
    cont.student3) had it written into their records by hand (all bf16) — in ``chain`` only, so a continuation
    starts from the saved ``chain`` (:func:`continued_chain`), not from ``chain_before`` recomputed.
    ``passages_by_run``: each run's share of packed 128-token passages (``--student-passages``; a run recorded
    without it had none)."""
    kd, before = info["kd"], info.get("chain_before", {"stream_batches": 0, "cpu_s": 0.0})
    by = dict(before.get("cpu_s_by_precision", {"fp32": before["cpu_s"]} if before["cpu_s"] else {}))
    precision = run_precision(info)
    by[precision] = round(by.get(precision, 0.0) + kd["cpu_s"], 1)
    runs = before.get("runs", 0)
    shares = [*before.get("passages_by_run", [0.0] * runs), float(info.get("passages", 0.0))]
    return {"stream_batches": before["stream_batches"] + kd["steps"],
            "cpu_s": round(before["cpu_s"] + kd["cpu_s"], 1), "cpu_s_by_precision": by,
            "runs": runs + 1, "passages_by_run": shares}  # fmt: skip


def student_stream(corpus: str, seed: int, texts: Texts, batch_size: int, passages: float = 0.0) -> dict[str, Any]:
    """What decides a 3-layer student's batch stream: the distillation text (corpus, seed, count: ``texts`` before
    any passages), the batch size, the seed of the batch order (a run that continues its chain skips the batches
    drawn so far, so it must draw from the same stream) and the share of packed passages added (recorded when > 0)."""
    stream = {"corpus": corpus, "seed": seed, "texts": len(texts[1]), "batch_size": batch_size}
    return stream | ({"passages": passages} if passages else {})


def _text_stream(stream: dict[str, Any]) -> dict[str, Any]:
    """A batch stream's record without its share of passages: what a continued chain must share."""
    return {k: v for k, v in stream.items() if k != "passages"}


def continued_chain(init: Path, now: dict[str, Any]) -> dict[str, Any]:
    """The chain of the saved student ``init`` (PREFIX), refused unless it drew its batches from the stream ``now``
    (skipping another stream's batch count would neither continue it nor start afresh); a student saved before its
    chain recorded its stream is refused too. A run that changes only the share of packed passages continues the
    chain: its text is the same plus (or minus) long rows made of that text, and it skips as many batches of its own
    stream as the chain has drawn (every text of the mix has been drawn as often either way, give or take a pass)."""
    before = json.loads(prefixed(init, ".json").read_text())
    was = before.get("chain", {}).get("stream")
    if was is None or _text_stream(was) != _text_stream(now):
        drew = f"drew its batches from another stream ({was})" if was else "records no batch stream"
        raise SystemExit(f"the saved student {init} {drew}, this run from {now}: continue it on the same text "
                         f"(corpus and seed) and batch size")  # fmt: skip
    return {k: v for k, v in before["chain"].items() if k != "stream"}  # as saved (not recomputed: see chain())


def student3(teacher: torch.nn.Module, args: argparse.Namespace, texts: Texts,
             load: Path | None) -> tuple[Any, dict]:  # fmt: skip
    """Layers 0, 3 and 5 kept (the three whose embeddings start closest to the teacher's, session 4), each
    learning the output of the teacher layer it stands for, plus the embeddings. ``--student-init PREFIX``
    continues a saved student (a warm restart: fresh optimizer moments and schedule) on the batches its chain has
    not drawn yet; one of another batch stream is refused."""
    student = drop_layers_(copy.deepcopy(teacher), STUDENT_KEEP)
    if load is not None:
        student.load_state_dict(torch.load(prefixed(load, ".pt")))
        return student.eval(), json.loads(prefixed(load, ".json").read_text())
    share = args.student_passages
    info: dict[str, Any] = {"keep": STUDENT_KEEP, "passages": share}
    stream = student_stream(args.corpus, args.seed, texts, EncoderKDConfig.batch_size, share)
    if args.student_init is not None:
        info["chain_before"] = continued_chain(args.student_init, stream)
        student.load_state_dict(torch.load(prefixed(args.student_init, ".pt")))
        info["init"] = str(args.student_init)
    weights = tuple(float(w) for w in args.student_layer_weights.split(",")) if args.student_layer_weights else None
    kd_texts = plus_passages(texts, share, args.seed)
    info["passage_rows"] = len(kd_texts[1]) - len(texts[1])
    config = _kd(args, "student", layer_map=tuple(STUDENT_KEEP), relation_weight=args.student_relation,
                 hidden_weight=args.student_hidden, layer_weights=weights, precision=args.student_precision,
                 skip_batches=int(info.get("chain_before", {}).get("stream_batches", 0)))  # fmt: skip
    info["kd_config"] = config.to_dict()  # the whole recipe (e.g. the optimizer: fused AdamW since session 19)
    info["kd"] = distill_encoder(student, teacher, kd_texts[1], kd_texts[2], config)
    info |= {"relation_weight": args.student_relation, "hidden_weight": args.student_hidden, "layer_weights": weights,
             "precision": args.student_precision}  # fmt: skip
    info["chain"] = chain(info) | {"stream": stream}
    _save(student, info, Path(args.json).with_suffix(".student3"))
    return student.eval(), info


def tome_distilled(teacher: torch.nn.Module, args: argparse.Namespace,
                   texts: Texts, load: Path | None) -> tuple[Any, dict]:  # fmt: skip
    """ToMe with r = 16 per layer at sequence 128, its weights distilled with the merging in place (embeddings
    only, on ~100-token docstring passages)."""
    student = student_copy(teacher)
    if load is not None:
        student.load_state_dict(torch.load(prefixed(load, ".pt")))
        return student.eval(), json.loads(prefixed(load, ".json").read_text())
    merge_tokens_(student, MergeTokensConfig(r=TOME_KD_R[128]))
    ids, mask = passages(teacher, texts[0])
    info: dict[str, Any] = {"r": TOME_KD_R, "kd": distill_encoder(student, teacher, ids, mask,
                                                                  _kd(args, "tome", batch_size=16))}  # fmt: skip
    student.reduction = None  # the weights are saved and exported without the reduction module
    _save(student, info, Path(args.json).with_suffix(".tome_kd"))
    return student.eval(), info


def export(model: torch.nn.Module, path: Path, seq: int) -> Path:
    ids = torch.full((2, seq), 2000, dtype=torch.long)
    torch.onnx.export(IdsOnly(model).eval(), (ids,), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch"}, "embedding": {0: "batch"}})  # fmt: skip
    return path


def ort_embed(path: Path, ids: torch.Tensor, batch: int = 32) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.cat([torch.from_numpy(sess.run(None, {"input_ids": ids[i : i + batch].numpy()})[0])
                      for i in range(0, len(ids), batch)])  # fmt: skip


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
    texts: Texts = ([], torch.empty(0), torch.empty(0))
    held: Texts = texts
    if chosen & {"heads", "student3", "tome_kd"}:
        texts, held, result["distill_corpus"] = distill_texts(teacher, args.corpus, seed=args.seed)
        result["distill_texts"] = len(texts[1])
    if "student3" in chosen:
        student, result["student3"] = student3(teacher, args, texts, args.student_from)
        result["student3"]["heldout_fidelity"] = heldout_fidelity(student, teacher, held)
        result["student3"]["test_fidelity_torch_seq32"] = sentence_fidelity(student, teacher, data32)
        result["student3"]["test_fidelity_torch_seq128"] = sentence_fidelity(student, teacher, data128)
        variants["student3"] = lambda s: student
    if "heads" in chosen:
        if args.heads_from is not None:
            pruned, result["heads"] = load_heads(teacher, args.heads_from)
        else:
            pruned, result["heads"] = head_pruned(teacher, data32, args, texts)
        result["heads"]["heldout_fidelity"] = heldout_fidelity(pruned, teacher, held)
        result["heads"]["test_fidelity_torch_seq32"] = sentence_fidelity(pruned, teacher, data32)
        result["heads"]["test_fidelity_torch_seq128"] = sentence_fidelity(pruned, teacher, data128)
        variants["heads"] = lambda s: pruned
    if "tome_kd" in chosen:
        merged, result["tome_kd"] = tome_distilled(teacher, args, texts, args.tome_from)
        variants["tome_kd"] = lambda s: merge_tokens_(copy.deepcopy(merged), MergeTokensConfig(r=TOME_KD_R[s]))
    if "tome" in chosen:
        variants["tome"] = lambda s: merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=TOME_R[s]))
    if "tome_big" in chosen:  # the merge counts of tome_kd, on the undistilled teacher
        variants["tome_big"] = lambda s: merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=TOME_KD_R[s]))
    if "prune" in chosen:
        variants["prune"] = lambda s: prune_tokens_(copy.deepcopy(teacher), PruneTokensConfig(keep_ratio=KEEP[s]))
    result["settings"] = {"tome_r": TOME_R, "tome_kd_r": TOME_KD_R, "prune_keep_ratio": KEEP, "threads": THREADS,
                          "heads": HEADS.to_dict(), "heads_kd": HEADS_KD, "student_keep": STUDENT_KEEP}  # fmt: skip
    result["rows"] = []
    if args.distill_only:
        result["load_after"] = os.getloadavg()
        return result
    with tempfile.TemporaryDirectory() as work:
        for seq, data in ((32, data32), (128, data128)):
            files = {"ort_fp32": export(teacher, Path(work) / f"fp32-{seq}.onnx", seq)}
            files |= int8_files(chosen, teacher, data, work, seq, files["ort_fp32"],
                                lambda: passages(teacher, docstring_sentences())[0], result)  # fmt: skip
            for name, build in variants.items():
                files[name] = export(build(seq), Path(work) / f"{name}-{seq}.onnx", seq)
            result["rows"] += measure(files, data, seq, args)
    result["load_after"] = os.getloadavg()
    return result


def measure(files: dict[str, Path], data: ds.DataBundle, seq: int, args: argparse.Namespace) -> list[dict]:
    """Fidelity of each ONNX file's embeddings to the fp32 file's, and latency interleaved at batch 1 and 32."""
    rows: list[dict] = []
    ids = getattr(data.test.dataset, "ids")  # noqa: B009 (the sentence set's token tensor)
    ref = ort_embed(files["ort_fp32"], ids)
    fid = {name: embedding_fidelity(ort_embed(path, ids), ref, pairs=data.info["pairs"])
           for name, path in files.items()}  # fmt: skip
    fid1 = {name: embedding_fidelity(ort_embed(path, ids, batch=1), ref, pairs=data.info["pairs"])
            for name, path in files.items() if "int8" in name or name.startswith("ds_split")}  # fmt: skip
    if args.timer == "cpu":
        return rows + cpu_rows(files, fid, fid1, seq, args.rounds)
    for batch in BATCHES:
        times = ds.interleave(dict(files), example_input=speed_ids(batch, seq), threads=THREADS,
                              rounds=args.rounds if batch == 1 else max(2, args.rounds // 2),
                              block=5 if batch == 1 else 2)  # fmt: skip
        base = times["ort_fp32"].median_ms
        for name in files:
            rows.append({"seq": seq, "batch": batch, "variant": name, "median_ms": round(times[name].median_ms, 3),
                         "speedup_vs_ort_fp32": round(base / times[name].median_ms, 3),
                         "fidelity": {k: round(v, 4) for k, v in fid[name].items()},
                         "fidelity_b1": {k: round(v, 4) for k, v in fid1.get(name, {}).items()}})  # fmt: skip
    return rows


def cpu_rows(files: dict[str, Path], fid: dict, fid1: dict, seq: int, rounds: int) -> list[dict]:
    """Latency in this process (``--timer cpu``): one ORT session per file, 1 intra-op thread (so inference runs
    on the calling thread) without spinning, files round-robin with the order reversed every round, the median of
    the calling thread's CPU time (``time.thread_time``) next to the wall time. On a machine loaded beyond its
    cores, wall time also counts the waits for a core; CPU time does not (sessions 5-6 used this timer too)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rows = []
    for batch in BATCHES:
        feed = {"input_ids": speed_ids(batch, seq).numpy()}
        cpu: dict[str, list[float]] = {k: [] for k in files}
        wall: dict[str, list[float]] = {k: [] for k in files}
        for s in sess.values():
            s.run(None, feed)
        order = list(files)
        for r in range(rounds if batch == 1 else max(2, rounds // 2)):
            for k in order if r % 2 == 0 else order[::-1]:
                for _ in range(5 if batch == 1 else 1):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    sess[k].run(None, feed)
                    cpu[k].append(1e3 * (time.thread_time() - c0))
                    wall[k].append(1e3 * (time.perf_counter() - w0))
        base_c, base_w = float(np.median(cpu["ort_fp32"])), float(np.median(wall["ort_fp32"]))
        for k in order:
            c, w = float(np.median(cpu[k])), float(np.median(wall[k]))
            rows.append({"seq": seq, "batch": batch, "variant": k, "timer": "thread_cpu", "n": len(cpu[k]),
                         "median_ms": round(c, 3), "wall_ms": round(w, 3), "speedup_vs_ort_fp32": round(base_c / c, 3),
                         "speedup_wall": round(base_w / w, 3),
                         "fidelity": {m: round(v, 4) for m, v in fid[k].items()},
                         "fidelity_b1": {m: round(v, 4) for m, v in fid1.get(k, {}).items()}})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/transformer_encoder.json")
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--timer", choices=("interleave", "cpu"), default="interleave",
                        help="interleave: ds.interleave (own processes, wall); cpu: in this process, thread CPU time")
    parser.add_argument("--wall", type=float, default=None,
                        help="also stop each distillation after this many wall seconds (it still anneals)")
    parser.add_argument("--student-relation", type=float, default=0.0,
                        help="MiniLM attention/value-relation transfer weight for the 3-layer student (0: off)")
    parser.add_argument("--student-hidden", type=float, default=1.0,
                        help="hidden-state loss weight of the 3-layer student (0: embeddings only)")
    parser.add_argument("--student-layer-weights", default=None,
                        help="per student layer weights of its hidden-state loss, e.g. 0,0,1 (default equal)")
    parser.add_argument("--student-precision", choices=PRECISIONS, default="bf16",
                        help="arithmetic of the 3-layer student's distillation passes (bf16, the default since session "
                             "19: CPU autocast bfloat16, 1.7x the steps per CPU-second at the same fidelity per step, "
                             "session 18; weights, optimizer and loss stay float32)")  # fmt: skip
    parser.add_argument("--student-passages", type=passage_share, default=0.0,
                        help="share of packed 128-token passages (runs of the distillation texts) added to the 3-layer "
                             "student's distillation text (session 14: long inputs the broad mix has few of)")
    parser.add_argument("--student-init", type=Path, default=None,
                        help="continue a saved 3-layer student (PREFIX.pt/.json): warm restart on unseen batches")
    parser.add_argument("--corpus", choices=("broad", "mix6"), default="broad",
                        help="distillation text: broad (session 10: text_corpus + templates + salad) or mix6 "
                             "(sessions 6-7: stdlib docstrings, templates, salad)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the distillation text and its order")
    parser.add_argument("--distill-only", action="store_true",
                        help="distil (and report PyTorch fidelity), save the students, skip the ONNX measurement")
    parser.add_argument("--variants", default="ort_opt_int8,ds_fused_int8,tome,prune,student3,heads",
                        help="comma-separated: ort_opt_int8, ds_fused_int8, ds_fused_int8_all, ds_mixed_int8, "
                             "ds_split_in, tome, prune, tome_kd, tome_big (tome_kd's r without distillation), "
                             "student3, heads (ort_fp32 always)")  # fmt: skip
    for what, cpu, lr in (("heads", 600, 5e-4), ("student", 900, 2e-4), ("tome", 900, 1e-4)):
        parser.add_argument(f"--{what}-cpu", type=float, default=cpu, help=f"distillation CPU seconds ({what})")
        parser.add_argument(f"--{what}-lr", type=float, default=lr)
        parser.add_argument(f"--{what}-from", type=Path, default=None,
                            help="reuse a distilled model saved by an earlier run (PREFIX.pt and PREFIX.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # the distillation's progress
    result = run(args)
    write_json_atomic(result, args.json)
    for row in result["rows"]:
        f = row["fidelity"]
        f1 = row.get("fidelity_b1") or {}
        b1 = f" | b1 cos {f1['cosine_mean']:.4f}/{f1['cosine_min']:.4f} nn {f1['nn_agreement']:.3f}" if f1 else ""
        print(f"seq {row['seq']:3d} batch {row['batch']:2d} {row['variant']:17s} {row['median_ms']:9.2f} ms "
              f"x{row['speedup_vs_ort_fp32']:.2f} (wall x{row.get('speedup_wall', 0):.2f})  "
              f"cos {f['cosine_mean']:.4f}/{f['cosine_min']:.4f} "
              f"nn {f['nn_agreement']:.3f} rho {f['spearman']:.3f} para {f['paraphrase_accuracy']:.3f}{b1}")
    for key in ("student3", "heads", "tome_kd"):
        if key in result:
            print(f"{key}:", json.dumps(result[key]))
    print("load before/after:", result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
