"""Bring your own model: every technique on ~25 Hugging Face architectures built offline from configs (issue 12).

Each cell is one technique applied to a fresh copy of one model and is recorded as
- ``works``: it ran, the output check passed (finite, same shapes, close where the technique preserves the function)
  and the coverage check passed (the layers the technique targets really changed);
- ``refused``: a DeepSlimError (its message is recorded: it must say what to do);
- ``wrong``: it ran but a check failed — a silently wrong result, the thing this benchmark exists to catch;
- ``crash``: any other exception (a bug).
Torch-Pruning runs beside deepslim's channel pruning on the same models: ``works``, ``error`` (it raised) or ``broken``
(it returned a model that crashes or changes its output shape).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/generality.py [--models a,b] [--techniques x,y]

Writes benchmarks/results/generality.json and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

# the repository root instead of this script's folder: benchmarks/transformers.py would shadow the package
sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks._common import result_header  # noqa: E402
from tests import _hf_models as hf  # noqa: E402

import deepslim as ds  # noqa: E402
from deepslim.models.adapters import weight_layers  # noqa: E402


class Wrong(Exception):
    """A check failed: the technique returned normally with a wrong or incomplete result."""


def _run(model: nn.Module, x: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        y = model.eval()(*x)
    return [t for t in (y if isinstance(y, (tuple, list)) else [y]) if isinstance(t, torch.Tensor)]


def _same_shape_finite(model: nn.Module, x: tuple, ref: list[torch.Tensor]) -> list[torch.Tensor]:
    got = _run(model, x)
    if [t.shape for t in got] != [t.shape for t in ref]:
        raise Wrong(f"output shapes {[tuple(t.shape) for t in ref]} -> {[tuple(t.shape) for t in got]}")
    if not all(torch.isfinite(t).all() for t in got):
        raise Wrong("non-finite output")
    return got


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _targets(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer a weight technique should reach: linear-like and convolution layers, by class hierarchy names."""
    names = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Conv1D")
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    found = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        tied = isinstance(w, nn.Parameter) and holders.get(id(w), 0) > 1
        if any(c.__name__ in names for c in type(m).__mro__) and not tied:
            found[n] = m
    return found


# -- techniques: each returns a short note on success, raises Wrong when a check fails ---------------------------------
def channel(model: nn.Module, x: tuple, ref: list) -> str:
    before = _params(model)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.3), x)
    _same_shape_finite(model, x, ref)
    if _params(model) >= before:
        raise Wrong(f"no parameter removed ({len(result.blocked)} groups kept whole)")
    return f"params {before} -> {_params(model)} ({result.capture})"


def magnitude(model: nn.Module, x: tuple, ref: list) -> str:
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    _same_shape_finite(model, x, ref)
    return _coverage(model, lambda w: float((w == 0).float().mean()) >= 0.49, "not 50% sparse")


def nm(model: nn.Module, x: tuple, ref: list) -> str:
    ds.prune_(model, ds.NMPruneConfig(n=2, m=4))
    _same_shape_finite(model, x, ref)
    return _coverage(model, lambda w: float((w == 0).float().mean()) >= 0.49, "not 2:4", allow_skip=True)


def kmeans(model: nn.Module, x: tuple, ref: list) -> str:
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    got = _same_shape_finite(model, x, ref)
    covered = _coverage(model, lambda w: w.unique().numel() <= 16, "more than 16 values")
    return f"{covered}, cos {_cosine(got[0], ref[0]):.3f}"


def svd(model: nn.Module, x: tuple, ref: list) -> str:
    before = _params(model)
    result = ds.factorize_(model, ds.SVDConfig(rank_ratio=0.25), example_input=x[0] if len(x) == 1 else None)
    _same_shape_finite(model, x, ref)
    if before - _params(model) != result.params_saved:
        raise Wrong(f"reported {result.params_saved} parameters saved, the model lost {before - _params(model)}")
    return f"{len(result.layers)} layers, saved {result.params_saved}"


def ptq(model: nn.Module, x: tuple, ref: list) -> str:
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x if len(x) > 1 else x[0]])
    got = _same_shape_finite(model, x, ref)
    cos = _cosine(got[0], ref[0])
    if cos < 0.9:
        raise Wrong(f"int8 fake-quant output cosine {cos:.3f}")
    return f"cos {cos:.3f}"


def onnx_fp32(model: nn.Module, x: tuple, ref: list) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        r = ds.export_onnx(model, Path(tmp) / "m.onnx", example_input=x if len(x) > 1 else x[0])
    if r.cosine < 0.999:
        raise Wrong(f"ONNX Runtime output cosine {r.cosine:.4f}")
    return f"max err {r.max_abs_error:.1e}"


def onnx_int8(model: nn.Module, x: tuple, ref: list) -> str:
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x if len(x) > 1 else x[0]])
    with tempfile.TemporaryDirectory() as tmp:
        r = ds.export_onnx(model, Path(tmp) / "m.onnx", example_input=x if len(x) > 1 else x[0])
    if r.format != "qdq-int8" or r.integer_layers == 0:
        raise Wrong(f"labelled {r.format}, {r.integer_layers} of {r.quantized_layers} layers on integer kernels")
    return f"{r.integer_layers}/{r.quantized_layers} integer, cos {r.cosine:.3f}"


def archive(model: nn.Module, x: tuple, ref: list) -> str:
    blob = ds.encode(model, example_input=x if len(x) > 1 else x[0])
    back = ds.decode(blob, model=copy.deepcopy(model))
    a, b = model.state_dict(), back.state_dict()
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        raise Wrong("decoded weights differ")
    return f"{len(blob)} bytes"


def pt2(model: nn.Module, x: tuple, ref: list) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = ds.save_model(model, Path(tmp) / "m.pt2", example_input=x if len(x) > 1 else x[0])
        back = ds.load_model(path)
        with torch.no_grad():  # an exported program's module: it cannot be switched to eval(), and need not be
            got = [t for t in tree_leaves(back(*x)) if isinstance(t, torch.Tensor)]
    if not all(torch.allclose(g, r, atol=1e-5) for g, r in zip(got, ref, strict=True)):
        raise Wrong("the loaded program computes something else")
    return "round trip exact"


def _coverage(model: nn.Module, ok: Callable[[torch.Tensor], bool], what: str, allow_skip: bool = False) -> str:
    targets = _targets(model)
    missed = [n for n, m in targets.items() if not ok(_weight(m).detach())]
    if allow_skip:  # N:M names the layers it cannot shape (reduction dimension not a multiple of m)
        reachable = set(weight_layers(model))
        missed = [n for n in missed if n in reachable and _divisible(targets[n])]
    if missed:
        raise Wrong(f"{len(missed)}/{len(targets)} targeted layers {what}: {', '.join(missed[:3])}")
    return f"{len(targets)} layers"


def _weight(m: nn.Module) -> torch.Tensor:
    """The weight of a layer ``_targets`` found (linear-like or convolution: each has one)."""
    w = m.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(m).__name__} has no weight tensor")
    return w


def _divisible(m: nn.Module) -> bool:
    from deepslim.models.adapters import layer_kind

    kind = layer_kind(m)
    if kind is None:  # only asked about the layers weight_layers found, which all have a kind
        raise TypeError(f"{type(m).__name__} is not a registered layer kind")
    return _weight(m).shape[kind.in_dim] % 4 == 0


def torch_pruning(model: nn.Module, x: tuple, ref: list) -> str:
    import torch_pruning as tp

    before = _params(model)
    out_width = ref[0].shape[-1]
    head = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.shape[0] == out_width]
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=0.3, ignored_layers=head[-1:])  # fmt: skip
        pruner.step()
    except Exception as exc:
        raise ds.DeepSlimError(f"Torch-Pruning raised {type(exc).__name__}: {str(exc)[:150]}") from exc
    try:
        _same_shape_finite(model, x, ref)
    except Exception as exc:
        raise Wrong(f"returned a broken model: {type(exc).__name__}: {str(exc)[:150]}") from exc
    if _params(model) >= before:
        raise Wrong("no parameter removed")
    return f"params {before} -> {_params(model)}"


TECHNIQUES = {"channel": channel, "torch-pruning": torch_pruning, "magnitude": magnitude, "nm": nm, "kmeans": kmeans,
              "svd": svd, "ptq-int8": ptq, "onnx-fp32": onnx_fp32, "onnx-int8": onnx_int8, "archive": archive,
              "pt2": pt2}  # fmt: skip


class _Timeout(BaseException):  # not an Exception: libraries catching those must not swallow it
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def cell(name: str, technique: str, limit_s: int = 120) -> dict:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        return _cell(name, technique)
    except _Timeout:
        return {"status": "error" if technique == "torch-pruning" else "crash", "note": f"timed out after {limit_s} s"}
    finally:
        signal.alarm(0)


def _cell(name: str, technique: str) -> dict:
    try:
        model, x = hf.build(name)
        ref = _run(model, x)
        return {"status": "works", "note": TECHNIQUES[technique](model, x, ref)}
    except Wrong as exc:
        return {"status": "wrong" if technique != "torch-pruning" or "broken" in str(exc) else "no-op",
                "note": str(exc)}
    except ds.DeepSlimError as exc:
        return {"status": "refused" if technique != "torch-pruning" else "error", "note": str(exc)[:300]}
    except Exception as exc:  # a bug: recorded with where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return {"status": "crash", "note": f"{type(exc).__name__}: {str(exc)[:200]} ({where.filename}:{where.lineno})"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(hf.names()))
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--limit-s", type=int, default=120, help="seconds a cell may take before it counts as a crash "
                        "(raise it on a loaded machine)")  # fmt: skip
    parser.add_argument("--out", "--json", default=str(Path(__file__).parent / "results" / "generality.json"))
    parser.add_argument("--merge", metavar="NOTE", help="update these cells of the existing --out file (the others "
                        "are kept) and append NOTE to its 'runs'")  # fmt: skip
    args = parser.parse_args()
    header = result_header("generality")
    models, techniques = args.models.split(","), args.techniques.split(",")
    table: dict[str, dict[str, dict]] = {m: {} for m in models}  # model -> technique -> cell
    for m in models:
        for t in techniques:
            table[m][t] = cell(m, t, args.limit_s)
            print(f"{m:16s} {t:14s} {table[m][t]['status']:8s} {table[m][t]['note'][:110]}", flush=True)
    runs = None
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        for m, row in table.items():
            old["cells"].setdefault(m, {}).update(row)
        table, runs = old["cells"], f"{old.get('runs', '')}; {args.merge}".strip("; ")
        models = list(table)
        techniques = list(dict.fromkeys(t for row in table.values() for t in row))
    summary = {t: {s: sum(table[m].get(t, {}).get("status") == s for m in models) for s in
                   ("works", "refused", "wrong", "crash", "error", "no-op")} for t in techniques}  # fmt: skip
    out = {**header, "families": {m: hf.FAMILIES[m] for m in models}, "summary": summary, "cells": table}
    if runs is not None:
        out["runs"] = runs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for t, counts in summary.items():
        print(f"{t:14s} " + "  ".join(f"{k} {v}" for k, v in counts.items() if v))


if __name__ == "__main__":
    main()
