"""``deepslim search``: per-layer pruning and precision under a measured budget (issue 14).

Writes ``OUT/search.json`` (budget, dense, uniform, best, pareto, finals_pool, recipe, latency_table, cost),
``OUT/search.html`` (the interactive Pareto front) and ``OUT/recipe.yaml`` (the chosen policy as an ordinary
recipe: ``deepslim compress MODEL --recipe OUT/recipe.yaml`` rebuilds it), both atomically and only when the search
completes; the study itself lives in ``OUT/study.journal`` (or ``--storage``), so an interrupted search (Ctrl-C)
resumes with the same command. ``--workers N`` runs the trials on N worker processes (``deepslim worker``, which
other machines start by hand on the same ``--storage``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from deepslim.cli._common import (
    add_model_args,
    err,
    load,
    nonneg_int,
    out,
    parse_options,
    positive_float,
    positive_int,
    threads_arg,
)
from deepslim.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command's parser to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
    p = sub.add_parser("search", help="search per-layer channel counts and int8/float under a measured budget")
    add_model_args(p)
    p.add_argument("--data", required=True, help="dataset spec (trials are judged on its validation split)")
    p.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="latency=0.5x (of dense), latency=3ms, size=200KB, energy=40uJ (on --device), "
                        "memory=64KB (peak activations); repeatable")  # fmt: skip
    p.add_argument("--objective", action="append", default=[], metavar="NAME",
                   help="accuracy, latency, size, energy, memory; repeatable or comma-separated (default: accuracy "
                        "and each budgeted metric, or accuracy and latency)")  # fmt: skip
    p.add_argument("--space", default="prune,int8", help="what to search: prune, int8, hpo (the fine-tune's "
                   "learning rate, epochs and distillation temperature), sparsity and kmeans (per-layer unstructured "
                   "sparsity and k-means bits: for --budget size / --objective size), comma-separated")  # fmt: skip
    p.add_argument("--tie-int8", type=nonneg_int, default=0, metavar="N",
                   help="int8 layers whose names share their first N dot-separated parts (1: a ResNet's stages, 2: "
                        "its blocks) choose int8 or float together: fewer precision mixes to draw (default 0: each "
                        "layer alone)")  # fmt: skip
    p.add_argument("--trials", type=positive_int, default=50, help="number of trials (default 50)")
    p.add_argument("--strategy", default="tpe",
                   help="tpe, nsga2, random, grid, tpe-multivariate, evolution or greedy (default tpe)")
    p.add_argument("--device", help="device profile whose cost model estimates energy: host, rpi4, ... (default host "
                   "when energy is an objective or budget)")  # fmt: skip
    p.add_argument("--runtime", default="onnxruntime", help="runtime whose latency is searched (onnxruntime)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the latency measurements (default 1)")
    p.add_argument("--latency-model", default=None, metavar="nodes|layers|measured",
                   help="what gives a trial's latency: nodes (default: every node of the trial's optimized ONNX "
                        "Runtime graph, timed alone and summed), layers (the per-layer table, calibrated) or "
                        "measured (the trial's model timed end to end, interleaved with the dense model)")
    p.add_argument("--remeasure-repeats", type=positive_int, default=3, metavar="N",
                   help="interleaved end-to-end runs of the finalists and the dense model; their minimum and maximum "
                        "are the noise band a finalist's budget is judged in (default 3)")  # fmt: skip
    p.add_argument("--round-to", type=int, default=8, help="channel counts are multiples of this (default 8: the "
                   "runtime's channel blocks)")  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning of the finalists, and in the recipe")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--proxy-steps", type=int, default=0, metavar="N",
                   help="judge each trial after N fine-tuning steps distilled from the dense model (default 0: after "
                        "batch-norm re-estimation alone, which scores heavily pruned models far below what they "
                        "recover to)")
    p.add_argument("--proxy-lr", type=positive_float, default=None, metavar="LR",
                   help="the proxy's peak learning rate (default --lr; fewer steps take a higher one)")
    p.add_argument("--measure-repeats", type=positive_int, default=5, metavar="N",
                   help="with --latency-model measured: runs of a trial whose first run meets the budget or misses it "
                        "by at most 15%% (judged by the median)")
    p.add_argument("--calibration-policies", type=nonneg_int, default=0, metavar="N",
                   help="measure N random policies end to end beside the 7 fixed ones when calibrating the node table: "
                        "with 10 or more, it is fitted in its sum and the weights' bytes through the dense model "
                        "(on MobileNetV2: 92%% of 50 fresh policies within 10%%; default 0: anchored to dense)")
    p.add_argument("--temperature", type=float, default=None,
                   help="the finalists' fine-tune (and the recipe's) distills from the dense model at this temperature")
    p.add_argument("--top-k", type=int, default=3, help="finalists fine-tuned and re-measured (default 3)")
    p.add_argument("--repair", action="store_true",
                   help="a sampled policy over a latency budget is repaired onto the next trial slot: the lightest "
                        "change the latency model puts under the limit (its channels as sampled, then notched down; "
                        "at each notch the mixes of its float layers turned int8, the least slack first; the rule is "
                        "recorded on the slot as repair_rule); needs --proxy-steps N "
                        "(or the hpo space), latency as the only budget, one worker and a sampled strategy (tpe, "
                        "tpe-multivariate, nsga2, random)")
    p.add_argument("--storage", help="Optuna storage: journal:PATH, postgresql://..., sqlite:///PATH "
                   "(default: a journal file in --out)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="run the trials on N worker processes of this machine (default 1: in this process); other "
                        "machines join with deepslim worker --storage URL --study NAME")  # fmt: skip
    p.add_argument("--worker-threads", type=threads_arg, default=1, metavar="N",
                   help="intra-op threads of each worker process (default 1)")  # fmt: skip
    p.add_argument("--study", default="deepslim-search", help="study name in the storage (default deepslim-search)")
    p.add_argument("--accept-low-fidelity", action="store_true",
                   help="quantize trials even where int8 and float outputs disagree (random weights: a speed-only "
                        "search); the recipe says the same")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="where per-layer latency tables are kept (default ~/.cache/deepslim/latency)")
    p.add_argument("--out", required=True, help="output directory (search.json, recipe.yaml, the study journal)")
    p.add_argument("--json", action="store_true", help="print search.json")
    p.set_defaults(func=cmd_search)


def _objectives(args: argparse.Namespace, budgets: list[Any]) -> list[str]:
    named = [n.strip() for text in args.objective for n in text.split(",") if n.strip()]
    if named:
        return named if "accuracy" in named or len(named) > 1 else ["accuracy", *named]
    return ["accuracy", *dict.fromkeys(b.metric for b in budgets)] if budgets else ["accuracy", "latency"]


def save_recipe(path: str | os.PathLike[str], doc: dict[str, Any], *, where: str = "the searched recipe") -> None:
    """Check ``doc`` as ``deepslim compress`` will read it (:meth:`Recipe.from_dict`: every setting made explicit)
    and write that, atomically — without a ``device`` when ``doc`` names none: the recipe class's default
    (cortex-m7) is not what the search used, and a recipe that says it would be wrong. It lives here, in the CLI,
    because the search package sits below the pipeline that defines recipes."""
    from deepslim.pipeline.recipe import Recipe
    from deepslim.search.recipe import write_recipe

    checked = Recipe.from_dict(doc, where=where).to_dict()
    if "device" not in doc:
        checked.pop("device", None)
    write_recipe(path, checked)


def cmd_search(args: argparse.Namespace) -> int:
    from deepslim.data import load_data
    from deepslim.search import LatencyTable, SearchSpace, as_budgets, check_objectives, search
    from deepslim.search.budget import check_device
    from deepslim.search.evaluate import LATENCY_MODELS
    from deepslim.search.recipe import policy_recipe
    from deepslim.search.strategies import STRATEGIES
    from deepslim.search.trials import REPAIR_ATTR

    if args.strategy not in STRATEGIES:  # every name is checked before the data and model are loaded
        raise ConfigError(f"unknown strategy {args.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if args.latency_model is not None and args.latency_model not in LATENCY_MODELS:
        raise ConfigError(f"unknown latency model {args.latency_model!r}; choose one of {', '.join(LATENCY_MODELS)}")
    budgets = list(as_budgets(args.budget))
    objectives = list(check_objectives(_objectives(args, budgets)))
    device = check_device(args.device, objectives, budgets)
    table = LatencyTable(runtime=args.runtime, threads=args.threads, cache_dir=args.cache_dir)
    from deepslim.search import storage as st

    st.require_optuna()  # a missing Optuna is said now, not after the data load and the calibration
    kinds = tuple(k.strip() for k in args.space.split(",") if k.strip())
    outdir = Path(args.out)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir} is a file; --out names a directory")
    if args.storage:  # a wrong host, port or password fails now, before the data and model are loaded
        st.open_storage(args.storage)
    else:  # and so does an --out where the default journal cannot be written
        st.check_journal(outdir / st.DEFAULT_JOURNAL)
    data = load_data(args.data, seed=args.seed)
    model = load(args, data).eval()
    space = SearchSpace.from_model(model, data.example_input, kinds=kinds, round_to=args.round_to,
                                   tie_int8=args.tie_int8)  # fmt: skip
    show = not (args.quiet or args.json)
    if show:
        err.print(f"searching {space.size:,} policies ({len(space.groups)} channel groups, {len(space.int8_layers)} "
                  f"int8/float layers) with {args.trials} {args.strategy} trials", markup=False)  # fmt: skip

    def progress(c: Any) -> None:
        if show:
            flag = "" if c.feasible else " (over budget, not recovered)" if c.recovery == "none" else " (over budget)"
            if REPAIR_ATTR in c.measurement.extra:
                flag += f" (repair of trial {c.measurement.extra[REPAIR_ATTR]})"
            energy = f", energy {c.value('energy'):.4g} µJ" if device else ""
            acc = "n/a" if c.accuracy is None else f"{c.accuracy:.4f}"  # None: over a latency budget, not judged
            err.print(f"trial {c.trial}: accuracy {acc}, latency {c.latency_ms:.3f} ms{energy}{flag}",
                      markup=False)  # fmt: skip

    # with workers, the data travels as its spec: each worker loads it as this process did
    given = (args.data, {"seed": args.seed}) if args.workers > 1 else (data, None)
    result = search(model, given[0], space, objectives, budgets, trials=args.trials, strategy=args.strategy,
                    storage=args.storage, seed=args.seed, out_dir=outdir, latency_table=table,
                    finetune_epochs=args.finetune_epochs, lr=args.lr, top_k=args.top_k, on_trial=progress,
                    workers=args.workers, threads=args.worker_threads, data_options=given[1],
                    study_name=args.study, device=device, latency_model=args.latency_model,
                    remeasure_repeats=args.remeasure_repeats, accept_low_fidelity=args.accept_low_fidelity,
                    proxy_steps=args.proxy_steps, temperature=args.temperature,
                    proxy_lr=args.proxy_lr, measure_repeats=args.measure_repeats,
                    calibration_policies=args.calibration_policies, repair=args.repair)  # fmt: skip
    doc = result.to_dict()
    recipe_path = outdir / "recipe.yaml"
    if result.best is not None:
        desc = f"searched by deepslim search ({', '.join(map(str, budgets)) or 'no budget'}; {args.strategy})"
        doc_recipe = policy_recipe(space, result.best.policy, finetune_epochs=args.finetune_epochs, lr=args.lr,
                                   seed=args.seed, model=args.model, data=args.data, description=desc,
                                   accept_low_fidelity=args.accept_low_fidelity,
                                   temperature=args.temperature, device=device,
                                   encode=any(m == "size" for m in [*objectives, *(b.metric for b in budgets)]))
        if args.weights:
            doc_recipe["weights"] = args.weights
        if args.arch:
            doc_recipe["arch"] = args.arch
        options = parse_options(args.option)
        if options:
            doc_recipe["model_options"] = options
        save_recipe(recipe_path, doc_recipe)
    doc["recipe"] = str(recipe_path) if result.best is not None else None
    doc["report"] = str(outdir / "search.html")
    _write_json(outdir / "search.json", doc)
    from deepslim.report.search_html import write_search_report

    write_search_report(_clean(doc), outdir / "search.html", title=f"deepslim search: {args.model} on {args.data}")
    if args.json:
        print(json.dumps(_clean(doc), indent=2, default=_json_default))
        return 0
    _render(doc)
    return 0


def _cells(c: dict[str, Any]) -> list[str]:
    acc = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.4f}"
    pred = c.get("predicted_latency_ms")
    meas = "n/a" if c["measured_latency_ms"] is None else f"{c['measured_latency_ms']:.3f}"
    again, budget = c.get("remeasured"), "-"
    if again:
        meas += f" ({again['band_ms'][0]:.3f}-{again['band_ms'][1]:.3f})"
        budget = "-" if again.get("budget_ms") is None else f"{again['budget_ms']:.3f}"
    size = "n/a" if c["archive_bytes"] is None else f"{c['archive_bytes']:,}"
    within = ("yes" if c["feasible"] else "no") + (f" ({again['verdict']})" if again else "")
    return [acc, "n/a" if pred is None else f"{pred:.3f}", meas, budget, size, within]


def _json_default(value: Any) -> Any:
    return str(value)


def _clean(value: Any) -> Any:
    """NaN and infinities as null: search.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from deepslim._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(doc), indent=2, default=_json_default) + "\n")


def _render(doc: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="search")
    for col in ("policy", "accuracy", "predicted ms", "measured ms (noise band)", "budget ms", "archive B",
                "within budget"):  # fmt: skip
        table.add_column(col)
    for label in ("dense", "uniform", "best"):
        c = doc.get(label)
        if c is None:
            table.add_row(label, "-", "-", "-", "-", "-", "no policy within budget")
            continue
        table.add_row(label, *_cells(c))
    out.print(table)
    for note in doc.get("notes", []):
        out.print(f"note: {note}")
    lt, cost = doc["latency_table"], doc["cost"]
    if lt.get("error_p90") is not None:
        other = lt.get("layer_table") if lt.get("latency_model") == "nodes" else lt.get("node_table")
        beside = ""
        if other and other.get("error_p90") is not None:
            name = "layer" if lt.get("latency_model") == "nodes" else "node"
            beside = f"; the {name} table: p90 {other['error_p90']:.1%}"
            beside += f", tau {other['kendall_tau']:.2f}" if other.get("kendall_tau") is not None else ""
        tau = "n/a" if lt["kendall_tau"] is None else f"{lt['kendall_tau']:.2f}"
        mac = "n/a" if lt["mac_proxy_kendall_tau"] is None else f"{lt['mac_proxy_kendall_tau']:.2f}"
        out.print(f"latency ({lt.get('latency_model', 'layers')[:-1]} table): error p90 {lt['error_p90']:.1%}, Kendall "
                  f"tau {tau} (MAC proxy {mac}) over {lt['points']} end-to-end measurements{beside}")  # fmt: skip
    out.print(f"{cost['trials']} trials in {cost['wall_s']:.0f} s ({cost['cpu_s']:.0f} CPU-s, "
              f"~{cost['energy_kwh']:.2g} kWh estimated)")
    if doc.get("recipe"):
        out.print(f"recipe: {doc['recipe']}")
    out.print(f"report: {doc['report']}")
