"""What the least-squares refit does to a head-pruned all-MiniLM-L6-v2, right after pruning (no distillation).

Prunes the model by ``--policy`` (heads_prune.py's syntax; default a third of the attention heads and 40 % of the
feed-forward units, importance from the broad corpus) once per ``--refit`` value, the same units each time, and prints
each pruned model's fidelity to the full one on the sentences at sequence 32: mean / min cosine, nearest-neighbour
agreement, Spearman. Session 12 measured mean cosine 0.639 with the refit (in the order of computation) and 0.864
without, which is why ``HeadPruneConfig.refit`` is off by default. ``--debug`` logs the refit's relative residual
for each fitted projection.

    OMP_NUM_THREADS=1 python benchmarks/heads_refit_probe.py --json /tmp/refit.json

It takes minutes of CPU: building the broad corpus, then pruning twice. A smoke run on tiny settings takes seconds
of pruning: ``--corpus mix6 --calib-texts 32 --batches 1``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import deepslim as ds
from _common import result_header, write_json_atomic
from deepslim.compress.prune.heads import prune_heads_
from deepslim.tasks.similarity import sentence_fidelity
from heads_prune import calibration, parse_policy
from transformer_encoder import distill_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    ap.add_argument("--policy", default="heads=1/3,ffn=0.4,calib=broad")
    ap.add_argument("--refit", type=int, nargs="+", default=[1, 0], choices=[0, 1])
    ap.add_argument("--corpus", default="broad", choices=["broad", "mix6"], help="the distillation texts' mix")
    ap.add_argument("--calib-texts", type=int, default=512, help="texts cut into calibration batches of 32")
    ap.add_argument("--batches", type=int, default=8, help="calibration batches read (HeadPruneConfig.batches)")
    ap.add_argument("--debug", action="store_true", help="log the refit's residuals")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s %(message)s")
    result = result_header("heads_refit_probe", threads=1) | {"args": vars(args), "runs": {}}
    c0 = time.process_time()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    texts, _, _ = distill_texts(teacher, args.corpus, seed=0)
    calib = calibration(teacher, texts, parse_policy(args.policy)[1], n=args.calib_texts)
    data32 = ds.load_data("sentences", seq_len=32, train_size=64)
    for refit in args.refit:
        config, _ = parse_policy(f"{args.policy},refit={refit},batches={args.batches}")
        student = copy.deepcopy(teacher)
        plan = prune_heads_(student, config, calib)
        run = {"kept": [b.keep for b in plan.blocks], "seq32": sentence_fidelity(student.eval(), teacher, data32),
               "cpu_s": round(time.process_time() - c0, 1)}  # fmt: skip
        result["runs"][f"refit={refit}"] = run
        print(f"refit={refit}", json.dumps(run), flush=True)
    if args.json:
        write_json_atomic(result, args.json)


if __name__ == "__main__":
    main()
