"""Token merging (ToMe) on all-MiniLM-L6-v2 at sequence 128: merge schedules and similarity metrics in ONNX Runtime,
latency against ORT fp32 in the same run, fidelity to the fp32 file's embeddings (issue 17, session 11).

Each variant is a merge schedule (tokens merged after each of the six layers' attention) and a metric
(``MergeTokensConfig.metric``: ``keys``, ToMe's keys averaged over heads; ``keys_states``, per-head keys and the
normalized token states). ``--kd NAME`` also distils that variant's weights with the merging in place
(embeddings only, ``deepslim.train.student.distill_encoder``) on the broad corpus' passages
(``deepslim.data.text_corpus``, never the evaluation texts) and measures it as ``NAME_kd``.

Fidelity, from each ONNX file's own outputs: the 72 built-in passages at sequence 128 (padded, ~99 real tokens:
the benchmark's set), 32 full-length texts of exactly 128 real tokens (the built-in passages two at a time, cut:
no padding to merge for free; the latency input's shape), and the 220 built-in sentences at sequence 32 with the
schedule's merge counts divided by 4 (one file per length: merge counts are constants of the graph). Latency:
``transformer_encoder.cpu_rows`` (this process, one ORT session per file, 1 thread, no spinning, files round-robin,
order reversed every round, median thread-CPU time and wall time) at batch 1 and 32 on full-length token ids.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/tome_seq128.py \\
        [--json benchmarks/results/transformer_encoder_session11_tome.json] [--variants keys16,ks16,ks_dec]
        [--rounds 6] [--kd ks_dec2 --kd-cpu 600 [--kd-wall S] [--kd-lr 5e-5] [--kd-init PREFIX]
        [--kd-monitor 300] | --kd-from PREFIX [--kd-as NAME]] [--profile 40]

``--kd-init PREFIX`` continues a saved ``--kd`` student of the same variant (a warm restart: fresh optimizer moments,
a new warm-up and cosine schedule) on the batches its chain has not drawn yet; ``chain`` in its JSON counts the
batches and CPU seconds of every run so far and the stream they come from (text count, batch size, seed: a
``--kd-init`` of another stream is refused; one of another variant too, unless ``--kd-init-other``: the weights
continue under this run's schedule). ``--kd-monitor S`` (with ``--kd-targets tokens``) measures the student
in PyTorch every S training CPU seconds on the 72 passages and the 32 full-length texts (cosine to the unmerged
model's embeddings; held out from training, not used to pick anything) and saves its weights so far as
``PREFIX.partial.pt``.

``--kd-as NAME`` (with ``--kd-from``) measures the saved student under NAME's schedule instead of its own, as
``NAME_kd`` (the weights of one schedule's distillation under another: session 15's fewer merge steps).

``--profile N`` also runs ONNX Runtime's per-node profiler (1 thread) on every sequence-128 file, N runs at batch 1
and N // 8 at batch 32, and sums each node's median time by what it computes (``profile`` in the JSON): the
merge (``bipartite_merge``) and its similarity metric (``merge_metric``), exported under their own scopes for this,
the q/k/v and attention-output projections, attention's own products and softmax, the feed-forward blocks,
residual adds and LayerNorms, the rest. Profiled times are wall times per node: read them as shares.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
import deepslim.compress.tokens.encoders as enc
from _common import result_header, write_json_atomic
from deepslim._io import atomic_path
from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
from deepslim.data.text_corpus import CorpusConfig, build_corpus
from deepslim.models.hf import tokenize
from deepslim.tasks.similarity import embedding_fidelity
from deepslim.train.student import EncoderKDConfig, distill_encoder
from deepslim.train.token_kd import distill_tokens
from token_thresholds import full_length_texts
from transformer_encoder import chain, cpu_rows, export, ort_embed, prefixed, speed_ids

# name: (tokens merged after each layer at sequence 128, metric)
SCHEDULES: dict[str, tuple[tuple[int, ...], str]] = {
    "keys8": ((8,) * 6, "keys"),  # session 7's tome row
    "keys16": ((16,) * 6, "keys"),  # session 7's tome_big row
    "ks16": ((16,) * 6, "keys_states"),
    "ks_dec": ((24, 20, 16, 12, 8, 4), "keys_states"),
    "ks_dec2": ((20, 20, 16, 16, 12, 12), "keys_states"),
    "ks18": ((18,) * 6, "keys_states"),
    "ks_mid": ((20, 16, 16, 16, 16, 16), "keys_states"),  # between ks16 and ks_dec2 in work removed (session 12)
    "ks16_drop": ((16,) * 6, "keys_states"),  # a latency bound, not a method: the last r tokens dropped, no merge
    # fewer merge steps for about ks16's work removed (session 15): each step's fixed cost is paid fewer times
    "ks16_5": ((16, 16, 16, 16, 16, 0), "keys_states"),  # ks16 without its last merge
    "ks19_5": ((19, 16, 16, 16, 16, 0), "keys_states"),  # ... that merge's tokens moved to the first layer
    "ks18_4": ((18, 18, 18, 18, 0, 0), "keys_states"),  # layers 0-3 only, ks16's work removed
    "ks20_4": ((20, 20, 16, 16, 0, 0), "keys_states"),  # layers 0-3 only, a little more
    # the normalized states alone as the metric (session 16): the keys half is ~5 % of ks16's time at batch 1
    "s16": ((16,) * 6, "states"),
    "s16_5": ((16, 16, 16, 16, 16, 0), "states"),
    # more work removed where it costs most at batch 1 (session 17): 8 more tokens merged in layer 0, whose
    # attention and feed-forward run first and on the most tokens (+7 % at batch 1 over s16_5 in a quick probe)
    "s24_5": ((24, 16, 16, 16, 16, 0), "states"),
}
DROP = "_drop"  # variants whose merge is replaced by dropping the last r tokens (no similarity, no merge graph)


@contextlib.contextmanager
def merge_replaced_by_drop() -> Iterator[None]:
    """While exporting a ``*_drop`` variant: each layer keeps its first T - r tokens, computing no similarity and no
    merge. Its latency is what the schedule's token counts alone would run at (its fidelity means nothing): the
    gap to the merging file is what the merge's own operators cost in ONNX Runtime."""
    saved = enc.bipartite_merge, enc.merge_metric

    def drop(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, **_: Any) -> Any:
        keep = x.shape[1] - min(r, (x.shape[1] - 1) // 2)
        return x[:, :keep], size[:, :keep]

    enc.bipartite_merge, enc.merge_metric = drop, lambda kind, keys, *_: keys[:, 0]
    try:
        yield
    finally:
        enc.bipartite_merge, enc.merge_metric = saved


class _Scoped(torch.nn.Module):
    """Calls a merge function under a module of its own, so that its exported nodes carry the module's name."""

    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kw: Any) -> Any:
        return self.fn(*args, **kw)


@contextlib.contextmanager
def merge_scoped(model: torch.nn.Module) -> Iterator[None]:
    """While exporting for ``--profile``: the merge's nodes are named ``.../tome_merge/...`` and the metric's
    ``.../tome_metric/...`` (the computation is unchanged)."""
    saved = enc.bipartite_merge, enc.merge_metric
    merge, metric = _Scoped(saved[0]), _Scoped(saved[1])
    model.add_module("tome_merge", merge)
    model.add_module("tome_metric", metric)
    enc.bipartite_merge, enc.merge_metric = merge, metric
    try:
        yield
    finally:
        enc.bipartite_merge, enc.merge_metric = saved


def node_kind(name: str, op: str, ffn_out: set[str]) -> str:
    """What an ONNX node of a (merging) BERT encoder computes, from its name and operator."""
    if "tome_merge" in name or "tome_metric" in name:
        return "merge" if "tome_merge" in name else "metric"
    if "embeddings" in name:
        return "embeddings"
    scope = name.rsplit("/", 1)[0]
    if "intermediate" in name or op in ("BiasGelu", "Gelu") or scope in ffn_out:
        return "ffn"
    if any(k in name for k in ("/query", "/key", "/value")) or "/output/dense" in name:
        return "attn_proj"
    if op in ("MatMul", "FusedMatMul", "Softmax", "Transpose", "Reshape"):
        return "attn_core"
    return "residual_ln" if op in ("Add", "LayerNormalization", "SkipLayerNormalization") else "other"


def ffn_output_scopes(path: Path) -> set[str]:
    """The scopes of the feed-forward blocks' output projections (``.../output/dense[_k]``) of an exported file:
    those fed by the intermediate block (the attention's output projection has the same module name)."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {o: n.name for n in graph.node for o in n.output}
    return {n.name.rsplit("/", 1)[0] for n in graph.node if n.op_type == "MatMul" and "/output/dense" in n.name
            and "intermediate" in producer.get(n.input[0], "")}  # fmt: skip


def profile(files: dict[str, Path], seq: int, runs: int) -> dict[str, Any]:
    """Per-node ORT profile (1 thread, no spinning) at batch 1 (``runs``) and 32 (``runs // 8``, at least 2): each
    node's median time summed by :func:`node_kind`, in ms, with the node counts and the load average."""
    import numpy as np
    import onnxruntime as ort

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for batch, n in ((1, runs), (32, max(2, runs // 8))):
            feed = {"input_ids": speed_ids(batch, seq).numpy()}
            for name, path in files.items():
                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                opts.enable_profiling, opts.profile_file_prefix = True, str(Path(work) / f"{name}-{batch}")
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                for _ in range(n + 2):
                    sess.run(None, feed)
                events = json.loads(Path(sess.end_profiling()).read_text())
                times: dict[str, list[float]] = {}
                ops: dict[str, str] = {}
                for e in events:
                    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                        node = e["name"].removesuffix("_kernel_time")
                        times.setdefault(node, []).append(e["dur"] / 1e3)
                        ops[node] = e["args"].get("op_name", "")
                ffn_out = ffn_output_scopes(path)
                ms: dict[str, float] = {}
                count: dict[str, int] = {}
                for node, t in times.items():
                    kind = node_kind(node, ops[node], ffn_out)
                    ms[kind] = ms.get(kind, 0.0) + float(np.median(t[2:] or t))
                    count[kind] = count.get(kind, 0) + 1
                total = sum(ms.values())
                out[f"{name}_b{batch}"] = {
                    "runs": n, "load": os.getloadavg(), "nodes": len(times), "node_median_sum_ms": round(total, 3),
                    "ms": {k: round(v, 3) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])},
                    "share": {k: round(v / total, 4) for k, v in ms.items()}, "node_counts": count,
                }  # fmt: skip
    return out


def config(name: str, seq: int) -> MergeTokensConfig:
    rs, metric = SCHEDULES[name.removesuffix("_kd")]
    return MergeTokensConfig(r=tuple(r * seq // 128 for r in rs), metric=metric)


def kd_passages(teacher: torch.nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The broad corpus' passages (4–7 consecutive sentences of one document) at sequence 128, those of at least
    64 tokens (shorter ones would mostly merge padding), at most ``n``."""
    ids, mask = tokenize(teacher, build_corpus(CorpusConfig(seed=0)).passages, seq_len=128)
    long = mask.sum(1) >= 64
    return ids[long][:n], mask[long][:n]


KD_STREAM = {"batch_size": 16, "seed": 0}  # the distillation's batch stream, with the texts


def stream(info: dict[str, Any]) -> dict[str, int]:
    """What decides a saved student's batch stream: its text count, batch size and seed (a run that continues its
    chain skips the batches drawn so far, so it must draw from the same stream)."""
    return {"texts": int(info["texts"]), **{k: int(info["kd_config"][k]) for k in KD_STREAM}}


def distilled(teacher: torch.nn.Module, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    student = copy.deepcopy(teacher)
    if args.kd_from is not None:
        student.load_state_dict(torch.load(prefixed(args.kd_from, ".pt")))
        return student.eval(), json.loads(prefixed(args.kd_from, ".json").read_text())
    info: dict[str, Any] = {"variant": args.kd}
    ids, mask = kd_passages(teacher, args.kd_texts)
    info["texts"] = len(ids)
    skip = 0
    if args.kd_init is not None:
        before = json.loads(prefixed(args.kd_init, ".json").read_text())
        if before["variant"] != args.kd and not args.kd_init_other:
            raise SystemExit(f"--kd-init {args.kd_init} is a {before['variant']} student, not {args.kd} (give "
                             f"--kd-init-other to continue it under {args.kd}'s schedule)")  # fmt: skip
        # the batches to skip are those of the chain's stream: continuing it needs the same texts, batch size, seed
        was, now = before.get("chain", {}).get("stream", stream(before)), {"texts": len(ids), **KD_STREAM}
        if was != now:
            raise SystemExit(f"--kd-init {args.kd_init} drew its batches from another stream ({was}), this run "
                             f"from {now}: give the same --kd-texts")  # fmt: skip
        student.load_state_dict(torch.load(prefixed(args.kd_init, ".pt")))
        info |= {"init": str(args.kd_init), "init_variant": before["variant"], "chain_before": chain(before)}
        skip = int(info["chain_before"]["stream_batches"])
    merge_tokens_(student, config(args.kd, 128))
    kd = EncoderKDConfig(cpu_seconds=args.kd_cpu, wall_seconds=args.kd_wall, lr=args.kd_lr,
                         hidden_weight=args.kd_hidden, skip_batches=skip, **KD_STREAM)  # fmt: skip
    info |= {"kd_config": kd.to_dict(), "targets": args.kd_targets}
    prefix = Path(args.json).with_suffix(".tome_kd")
    if args.kd_targets == "tokens":
        watch = held_out_monitor(teacher, prefixed(prefix, ".partial.pt")) if args.kd_monitor else None
        info["kd"] = distill_tokens(student, teacher, ids, mask, kd, monitor=watch,
                                    monitor_every=args.kd_monitor or 300.0)  # fmt: skip
    else:
        info["kd"] = distill_encoder(student, teacher, ids, mask, kd)
    info["chain"] = chain(info) | {"stream": stream(info)}
    student.reduction = None  # type: ignore[assignment]  # saved without the reduction module (it holds no weights)
    with atomic_path(prefixed(prefix, ".pt")) as tmp:  # an interrupt leaves no half-written weights
        torch.save(student.state_dict(), tmp)
    with atomic_path(prefixed(prefix, ".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
    return student.eval(), info


def held_out_monitor(teacher: torch.nn.Module, partial: Path) -> Any:
    """A ``distill_tokens`` monitor: the student's (PyTorch) cosine mean / min to the unmerged model's embeddings on
    the 72 passages at sequence 128 and on the 32 full-length texts; it also saves the student's weights."""
    d128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    sets = {"passages128": test_set(d128).ids, "full_length128": full_length_texts(teacher)}
    with torch.no_grad():
        refs = {k: teacher(ids, (ids != 0).long()) for k, ids in sets.items()}

    def watch(student: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, ids in sets.items():
            cos = torch.nn.functional.cosine_similarity(student(ids, (ids != 0).long()).double(), refs[k].double())
            out |= {f"{k}_mean": round(float(cos.mean()), 4), f"{k}_min": round(float(cos.min()), 4)}
        reduction, student.reduction = student.reduction, None  # type: ignore[assignment]
        with atomic_path(partial) as tmp:  # an interrupt while saving leaves the last complete weights
            torch.save(student.state_dict(), tmp)
        student.reduction = reduction
        return out

    return watch


def fidelity(files: dict[str, Path], ids: torch.Tensor, pairs: Any = ()) -> dict[str, dict[str, float]]:
    ref = ort_embed(files["ort_fp32"], ids)
    return {name: {k: round(v, 4) for k, v in embedding_fidelity(ort_embed(path, ids), ref, pairs=pairs).items()}
            for name, path in files.items()}  # fmt: skip


def test_set(bundle: ds.DataBundle) -> Any:
    """The sentence set's test dataset (its ``ids`` and ``mask`` tensors)."""
    return bundle.test.dataset


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = result_header("tome_seq128", 1)
    result["load_before"] = os.getloadavg()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    names = [n for n in args.variants.split(",") if n]
    models = {n: teacher for n in names}
    result["schedules"] = {n: {"r": list(SCHEDULES[n][0]), "metric": SCHEDULES[n][1]} for n in names}
    if args.kd or args.kd_from:
        student, result["kd"] = distilled(teacher, args)
        base = args.kd_as or result["kd"]["variant"]  # --kd-as: a saved student under another schedule
        models[base + "_kd"] = student
        result["schedules"][base + "_kd"] = {"r": list(SCHEDULES[base][0]), "metric": SCHEDULES[base][1],
                                             "distilled": True, "distilled_as": result["kd"]["variant"]}  # fmt: skip
    d32 = ds.load_data("sentences", seq_len=32, train_size=64)
    d128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    full = full_length_texts(teacher)
    with tempfile.TemporaryDirectory() as work:
        files: dict[int, dict[str, Path]] = {}
        for seq in (32, 128):
            files[seq] = {"ort_fp32": export(teacher, Path(work) / f"fp32-{seq}.onnx", seq)}
            for name, base in models.items():
                model = merge_tokens_(copy.deepcopy(base), config(name, seq))
                with merge_replaced_by_drop() if name.endswith(DROP) else contextlib.nullcontext():
                    files[seq][name] = export(model, Path(work) / f"{name}-{seq}.onnx", seq)
        set32, set128 = test_set(d32), test_set(d128)
        result["fidelity"] = {"passages128": fidelity(files[128], set128.ids, d128.info["pairs"]),
                              "full_length128": fidelity(files[128], full),
                              "sentences32": fidelity(files[32], set32.ids, d32.info["pairs"])}  # fmt: skip
        fid = result["fidelity"]["passages128"]
        result["rows"] = cpu_rows(files[128], fid, {}, 128, args.rounds)
        if args.profile:
            scoped = {"ort_fp32": files[128]["ort_fp32"]}
            for name, base in models.items():
                if name.endswith(DROP):
                    continue
                model = merge_tokens_(copy.deepcopy(base), config(name, 128))
                with merge_scoped(model):
                    scoped[name] = export(model, Path(work) / f"{name}-scoped.onnx", 128)
            result["profile"] = profile(scoped, 128, args.profile)
    result["load_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/transformer_encoder_session11_tome.json")
    parser.add_argument("--variants", default="keys16,ks16,ks_dec", help=f"comma-separated of {', '.join(SCHEDULES)}")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--kd", choices=tuple(SCHEDULES), default=None, help="also distil this variant (NAME_kd)")
    parser.add_argument("--kd-cpu", type=float, default=600.0, help="distillation budget, process CPU seconds")
    parser.add_argument("--kd-wall", type=float, default=None, help="also stop after this many wall seconds")
    parser.add_argument("--kd-lr", type=float, default=5e-5)
    parser.add_argument("--kd-texts", type=int, default=6000)
    parser.add_argument("--kd-targets", choices=("embedding", "tokens"), default="embedding",
                        help="embedding: the pooled embedding only (distill_encoder, session 11); tokens: also every "
                             "merged token's members' mean teacher state at every layer (train.token_kd, session 12)")
    parser.add_argument("--kd-hidden", type=float, default=1.0, help="weight of the token loss (--kd-targets tokens)")
    parser.add_argument("--kd-init", type=Path, default=None,
                        help="continue a saved --kd student PREFIX.pt/.json (same variant; warm restart)")  # fmt: skip
    parser.add_argument("--kd-init-other", action="store_true",
                        help="--kd-init may be a student of another schedule (it continues under --kd's)")
    parser.add_argument("--kd-monitor", type=float, default=0.0,
                        help="--kd-targets tokens: held-out cosine every S training CPU-s (0: off)")  # fmt: skip
    parser.add_argument("--kd-from", type=Path, default=None, help="reuse PREFIX.pt/.json of an earlier --kd run")
    parser.add_argument("--kd-as", choices=tuple(SCHEDULES), default=None,
                        help="with --kd-from: measure the saved student under this schedule (as NAME_kd)")
    parser.add_argument("--profile", type=int, default=0,
                        help="also profile each s128 file per node: N runs at batch 1, N // 8 at 32 (0: off)")
    args = parser.parse_args()
    if args.kd_monitor and args.kd_targets != "tokens":
        parser.error("--kd-monitor needs --kd-targets tokens (distill_encoder has no monitor)")
    if args.kd_as is not None and args.kd_from is None:
        parser.error("--kd-as measures a saved student (--kd-from) under another schedule")
    if args.kd_init is not None and args.kd_from is not None:
        parser.error("--kd-init continues a distillation and --kd-from reuses one without distilling: give one")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # the distillation's progress
    result = run(args)
    write_json_atomic(result, args.json)
    for row in result["rows"]:
        f, name = row["fidelity"], row["variant"]
        full, s32 = result["fidelity"]["full_length128"][name], result["fidelity"]["sentences32"][name]
        print(f"b{row['batch']:<2d} {name:10s} {row['median_ms']:9.2f} ms x{row['speedup_vs_ort_fp32']:.3f} "
              f"(wall x{row['speedup_wall']:.3f})  s128 cos {f['cosine_mean']:.4f}/{f['cosine_min']:.4f} "
              f"nn {f['nn_agreement']:.3f} rho {f['spearman']:.3f} | full {full['cosine_mean']:.4f}/"
              f"{full['cosine_min']:.4f} | s32 {s32['cosine_mean']:.4f}/{s32['cosine_min']:.4f}")
    print("kd:", json.dumps(result.get("kd", {}).get("kd")))
    for key, prof in result.get("profile", {}).items():
        print(f"profile {key:14s} {prof['node_median_sum_ms']:9.2f} ms", json.dumps(prof["share"]))
    print("load before/after:", result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
