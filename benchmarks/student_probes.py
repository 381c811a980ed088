"""Short paired probes of a 3-layer all-MiniLM-L6-v2 student under different distillation settings (the loss, the
learning rate, the arithmetic of the passes), to choose those of a long run from measurements instead of guesses.

Every probe starts from the same student — a saved one (``--init PREFIX``, as written by ``transformer_encoder.py``),
continued on the batches its chain has not drawn yet (``EncoderKDConfig.skip_batches``), or without ``--init`` a
fresh one (teacher layers 0, 3 and 5, the stream from its start) — draws the same batches for the same number of
steps, and is measured on the built-in sentences (sequence 32 and 128 passages) and on held-out distillation text.
A step budget (not CPU seconds; ``--cpu`` sets one) makes the probes exactly paired on a loaded machine; their CPU
seconds are recorded.
Each probe's student is saved (``PREFIX.<probe>.student3.pt/.json``) so the best one can be continued with
``transformer_encoder.py --student-init``.

    python benchmarks/student_probes.py --init /tmp/t10s/full_student3.student3 --steps 160 \\
        --json benchmarks/results/transformer_encoder_session11_student_probes.json [--probes control,emb,last]
    python benchmarks/student_probes.py --steps 150 --probes fp32,bf16 \
        --json benchmarks/results/transformer_encoder_session18_student_probes.json  # fresh student, fp32 vs bf16
    python benchmarks/student_probes.py --init /tmp/s18/cont.student3 --cpu 300 --lr 1e-4 --probes bf16,p10 \
        --json benchmarks/results/transformer_encoder_session19_student_probes.json  # packed passages, equal CPU

A probe with packed 128-token passages (``p05``, ``p10``) draws from the text plus those rows, so its batches
differ from the others' beyond the first; such probes are compared under ``--cpu`` (equal CPU seconds, as a long run
would spend them) rather than equal steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, write_json_atomic
from deepslim.compress.tokens import drop_layers_
from deepslim.tasks.similarity import sentence_fidelity
from deepslim.train.student import EncoderKDConfig, distill_encoder
from transformer_encoder import (
    STUDENT_KEEP,
    _save,
    chain,
    continued_chain,
    distill_texts,
    heldout_fidelity,
    plus_passages,
    prefixed,
    student_stream,
)

PROBES: dict[str, dict[str, Any]] = {
    "control": {"hidden_weight": 1.0},  # session 10's loss: embeddings + hidden states of layers 0, 3, 5
    "emb": {"hidden_weight": 0.0},  # the sentence embeddings only
    "last": {"hidden_weight": 1.0, "layer_weights": (0.0, 0.0, 1.0)},  # embeddings + the last layer's states
    "lr4": {"hidden_weight": 1.0, "lr": 4e-4},  # session 10's loss, twice the peak learning rate
    "fp32": {"hidden_weight": 1.0, "precision": "fp32"},  # session 10's loss, float32 passes (= control)
    "bf16": {"hidden_weight": 1.0, "precision": "bf16"},  # session 10's loss, passes under CPU autocast bfloat16
    # bf16 with packed 128-token passages added, this share of the distillation text (session 19: s128); the broad
    # mix's 111,914 texts pack into 14,445 passages of 128 tokens at most, a share of 11.4 %
    "p05": {"hidden_weight": 1.0, "precision": "bf16", "passages": 0.05},
    "p10": {"hidden_weight": 1.0, "precision": "bf16", "passages": 0.1},
}
FRESH = {"stream_batches": 0, "cpu_s": 0.0, "runs": 0}  # the chain before a fresh student's first run


def probe(name: str, teacher: torch.nn.Module, init: Path | None, texts: Any,
          args: argparse.Namespace) -> tuple[Any, dict]:  # fmt: skip
    """Probe ``name`` from the saved student ``init`` (None: a fresh one) on the batches its chain has not drawn."""
    student = drop_layers_(copy.deepcopy(teacher), STUDENT_KEEP)
    spec = {"lr": args.lr} | PROBES[name]
    share = float(spec.pop("passages", 0.0))
    stream = student_stream("broad", args.seed, texts, EncoderKDConfig.batch_size, share)
    before = dict(FRESH)
    if init is not None:
        student.load_state_dict(torch.load(prefixed(init, ".pt")))
        before = continued_chain(init, stream)  # refused unless the saved chain drew from this stream's text
    cpu = getattr(args, "cpu", None)
    config = EncoderKDConfig(cpu_seconds=cpu, steps=None if cpu else args.steps, layer_map=tuple(STUDENT_KEEP),
                             seed=args.seed, skip_batches=int(before["stream_batches"]), **spec)  # fmt: skip
    kd_texts = plus_passages(texts, share, args.seed)
    info: dict[str, Any] = {"keep": STUDENT_KEEP, "probe": name, "init": str(init) if init else None,
                            "chain_before": before, "config": config.to_dict(), "passages": share,
                            "passage_rows": len(kd_texts[1]) - len(texts[1])}  # fmt: skip
    info["kd"] = distill_encoder(student, teacher, kd_texts[1], kd_texts[2], config)
    info["chain"] = chain(info) | {"stream": stream}
    return student.eval(), info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, default=None,
                        help="the saved student to continue (PREFIX); without it a fresh 3-layer student")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--cpu", type=float, default=None,
                        help="a CPU-second budget per probe instead of --steps (probes with passages draw longer "
                             "batches: compare them at equal CPU)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0, help="the seed of the chain being continued")
    parser.add_argument("--probes", default="control,emb,last", help=f"comma-separated, of {', '.join(PROBES)}")
    parser.add_argument("--json", default="benchmarks/results/transformer_encoder_session11_student_probes.json")
    args = parser.parse_args(argv)
    names = args.probes.split(",")
    if unknown := [name for name in names if name not in PROBES]:
        parser.error(f"unknown probe(s) {', '.join(unknown)}: choose from {', '.join(PROBES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # the distillation's progress
    result = result_header("transformers", 1) | {"load_before": os.getloadavg(), "probes": {}}
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    data32 = ds.load_data("sentences", seq_len=32, train_size=2048)
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    texts, held, result["distill_corpus"] = distill_texts(teacher, "broad", seed=args.seed)
    for name in names:
        w0, load0 = time.monotonic(), os.getloadavg()
        student, info = probe(name, teacher, args.init, texts, args)
        info |= {"test_fidelity_torch_seq32": sentence_fidelity(student, teacher, data32),
                 "test_fidelity_torch_seq128": sentence_fidelity(student, teacher, data128),
                 "heldout_fidelity": heldout_fidelity(student, teacher, held),
                 "wall_s": round(time.monotonic() - w0, 1), "load_before": load0, "load_after": os.getloadavg()}
        _save(student, info, Path(args.json).with_suffix(f".{name}.student3"))
        result["probes"][name] = info
        print(name, json.dumps({k: info[k] for k in ("kd", "test_fidelity_torch_seq32", "test_fidelity_torch_seq128",
                                                      "heldout_fidelity")}), flush=True)  # fmt: skip
        result["load_after"] = os.getloadavg()
        write_json_atomic(result, args.json)  # after every probe: a later one that fails keeps the earlier ones


if __name__ == "__main__":
    main()
