"""Paired distillation probes of one saved pruned MiniLM with AdamW settings EncoderKDConfig has no field for (issue 17,
session 20).

    python benchmarks/heads_probes20.py --from /tmp/h19/q-0 --cpu 150 --lr 5e-4 --precision bf16 --batch-size 64 \
        --variants "lr=5e-4;lr=5e-4,betas=0.9:0.98" --json benchmarks/results/heads_session20_betas1.json

Each variant is a ``heads_prune.py kdprobe`` variant (EncoderKDConfig fields, ``heads_prune.kd_spec``) plus
``betas=B1:B2``: AdamW's moment decays (torch's default 0.9:0.999). Every variant starts from the same weights and
draws the same seeded batches under the same CPU budget (``heads_prune.probe_one``). The betas reach the optimizer
through :func:`optimizer`, which wraps ``deepslim.train.student.adamw`` for the call: the library is not changed to
probe a setting first.

    python benchmarks/heads_probes20.py distill --betas 0.9:0.98 --policy "heads=1/3,ffn=0.3,calib=broad,refit=0" \
        --cpu 600 --lr 5e-4 --precision bf16 --batch-size 64 --out /tmp/h20/kd --json ...
        ``heads_prune.py distill`` with those betas (recorded in the JSON's kd_config)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deepslim as ds
import deepslim.train.student as student_kd
import heads_prune
from _common import result_header, write_json_atomic
from deepslim.errors import ConfigError
from deepslim.train.student import EncoderKDConfig
from heads_prune import fidelity, kd_spec, load, probe_one
from transformer_encoder import distill_texts

EXTRA = ("betas",)
"""The variant keys this script applies itself (AdamW's settings); the rest go to EncoderKDConfig."""


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``lr=5e-4,betas=0.9:0.98`` -> (``lr=5e-4``, {"betas": (0.9, 0.98)}); each beta in [0, 1), else a ConfigError."""
    rest, extra = [], {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        if key != "betas":
            rest.append(part)
            continue
        try:
            betas = tuple(float(v) for v in value.split(":"))
        except ValueError:
            raise ConfigError(f"betas is B1:B2 (two numbers in [0, 1)), got {value!r}") from None
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"betas is B1:B2 (two numbers in [0, 1)), got {value!r}")
        extra["betas"] = betas
    return ",".join(rest), extra


@contextlib.contextmanager
def optimizer(extra: dict[str, Any]) -> Iterator[None]:
    """While inside, every AdamW the distillation builds takes ``extra`` (e.g. its betas) in each parameter group."""
    original = student_kd.adamw

    def build(params: Any, config: EncoderKDConfig) -> Any:
        opt = original(params, config)
        for group in opt.param_groups:
            group.update(extra)
        return opt

    student_kd.adamw = build
    try:
        yield
    finally:
        student_kd.adamw = original


def distill(argv: list[str]) -> None:
    """``heads_probes20.py distill --betas B1:B2 ARGS``: ``heads_prune.py distill ARGS`` with those AdamW betas,
    recorded in the result JSON beside its kd_config."""
    parser = argparse.ArgumentParser(description="heads_prune.py distill with AdamW betas")
    parser.add_argument("--betas", required=True, help="B1:B2")
    known, rest = parser.parse_known_args(argv[1:])
    try:
        extra = split_spec(f"betas={known.betas}")[1]
    except ConfigError as exc:
        parser.error(str(exc))
    with optimizer(extra):
        heads_prune.main(["distill", *rest])
    out = Path(vars(heads_prune_args(rest))["json"])
    result = json.loads(out.read_text())
    result["student"]["kd_config"]["betas"] = list(extra["betas"])
    write_json_atomic(result, str(out))


def heads_prune_args(rest: list[str]) -> argparse.Namespace:
    """The ``--json`` of a heads_prune.py command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", required=True)
    return parser.parse_known_args(rest)[0]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["distill"]:
        distill(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_", required=True, help="the saved pruned model's prefix")
    parser.add_argument("--variants", required=True, help="kdprobe variants (and betas=B1:B2), separated by ;")
    parser.add_argument("--json", required=True)
    parser.add_argument("--cpu", type=float, default=150.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--freeze-embeddings", type=int, default=1)
    args = parser.parse_args(argv)
    specs = [v.strip() for v in args.variants.split(";") if v.strip()]
    for spec in specs:
        try:  # every variant checked before any work
            EncoderKDConfig(**({"cpu_seconds": args.cpu} | kd_spec(split_spec(spec)[0])))
        except (ConfigError, ValueError, TypeError, ZeroDivisionError) as exc:
            parser.error(f"--variants {spec!r}: {exc}")
    result = result_header("heads_probes20", 1) | {"argv": vars(args), "probes": {}}
    w0 = time.monotonic()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    texts, held, result["distill_corpus"] = distill_texts(teacher, "broad", seed=args.seed)
    data32 = ds.load_data("sentences", seq_len=32, train_size=64)
    data128 = ds.load_data("sentences", seq_len=128, passages=True, train_size=64, salad=0.0)
    base, info = load(teacher, Path(args.from_))
    result["pruned"] = {k: v for k, v in info.items() if k != "kept"}
    for spec in specs:
        rest, extra = split_spec(spec)
        with optimizer(extra):
            student, probe = probe_one(args, base, teacher, texts, rest)
        probe["optimizer"] = {k: list(v) for k, v in extra.items()}
        probe["after"] = fidelity(student, teacher, held, data32, data128)
        result["probes"][spec] = probe
        write_json_atomic(result, args.json)
        print(spec, json.dumps(probe["kd"]), json.dumps(probe["after"]), flush=True)
    result["wall_s"] = round(time.monotonic() - w0, 1)
    write_json_atomic(result, args.json)


if __name__ == "__main__":
    main()
