"""``deepslim compress`` (run a recipe), ``pack`` / ``unpack`` (the .dsz archive) and ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deepslim.errors import ArchiveError, ConfigError


def add_parsers(sub: argparse._SubParsersAction, model_args: Any) -> None:
    p = sub.add_parser("compress", help="run a compression recipe; every stage measured, saved in a run directory")
    from deepslim.cli import add_model_args

    add_model_args(p, optional=True)
    p.add_argument("--recipe", required=True, help="recipe YAML file, or a built-in recipe's name")
    p.add_argument("--data", help="dataset spec (default: the recipe's)")
    p.add_argument("--out", required=True, help="run directory (metrics.json, stage models, archive)")
    p.add_argument("--device", help="device for the energy and latency estimates (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (as a whole, once the "
                   "new run completes)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print metrics.json's stages as JSON")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("pack", help="encode a model into a compact .dsz archive (sparse, shared, Huffman-coded)")
    model_args(p)
    p.add_argument("-o", "--output", required=True, help="archive path (.dsz)")
    p.add_argument("--no-huffman", action="store_true", help="fixed-width streams instead of Huffman codes")
    p.add_argument("--json", action="store_true", help="print the byte accounting as JSON")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="decode a .dsz archive into a checkpoint that load_model reads")
    p.add_argument("archive", help=".dsz archive")
    p.add_argument("-o", "--output", required=True, help="checkpoint (.pt) or torch.export program (.pt2)")
    p.add_argument("--json", action="store_true", help="print the archive's byte accounting as JSON")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("demo", help="Deep Compression of LeNet-5 on digits, end to end, measured")
    p.add_argument("--epochs", type=int, help="initial training epochs (default: the recipe's 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cortex-m7")
    p.add_argument("--out", default="deepslim-demo", help="run directory the demo writes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--json", action="store_true", help="print the before/after measurements as JSON")
    p.set_defaults(func=cmd_demo)


class _Progress:
    """Progress of a recipe run on stderr: a bar per stage (epochs when it trains), a line when a stage ends."""

    def __init__(self, err: Console, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        # bars only on a terminal: in a log they are noise (and an error stays the only line on stderr)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True, disable=quiet or not err.is_terminal)  # fmt: skip
        self.task: Any = None

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event == "stage_start":
            label = f"stage {payload['index']}: {payload['stage']}"
            self.task = self.bar.add_task(label, total=payload.get("epochs") or None)
        elif event == "epoch" and self.task is not None:
            self.bar.update(self.task, advance=1, description=f"stage {payload['stage']}: epoch {payload['epoch']}, "
                            f"val accuracy {payload['val_accuracy']:.4f}")  # fmt: skip
        elif event == "stage_end":
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            self.bar.console.print(f"{payload['index']} {payload['stage']}: accuracy {payload['accuracy']:.4f}, "
                                   f"{payload['nonzero_params']:,} nonzero parameters, archive "
                                   f"{_bytes(payload.get('archive_bytes'))} ({payload['seconds']:.1f} s)",
                                   markup=False)  # fmt: skip


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} B"


def stage_table(metrics: list[dict[str, Any]], title: str) -> Table:
    """Deep Compression's table: each stage's accuracy, nonzeros, bytes on disk and ratio to the dense model."""
    ref = next((m["archive_bytes"] for m in metrics if m["stage"] == "train"), metrics[0]["archive_bytes"])
    table = Table("stage", "accuracy", "params", "nonzero", "archive", "ratio", "MACs", "energy (est.)",
                  title=title)  # fmt: skip
    for m in metrics:
        ratio = f"{ref / m['archive_bytes']:.1f}x" if m.get("archive_bytes") and ref else "n/a"
        table.add_row(f"{m['index']} {m['stage']}", f"{100 * m['accuracy']:.2f} %", f"{m['params']:,}",
                      f"{m['nonzero_params']:,}", _bytes(m.get("archive_bytes")), ratio, f"{m['macs']:,}",
                      f"{m['estimated_energy_uj']:.2f} uJ")  # fmt: skip
    return table


def cmd_compress(args: argparse.Namespace, out: Console, err: Console) -> int:
    from dataclasses import replace

    from deepslim.cli import parse_options
    from deepslim.pipeline import load_recipe, run_recipe
    from deepslim.pipeline.run import check_run_dir

    check_run_dir(args.out, overwrite=args.overwrite)  # refused before the recipe, data or model are read
    recipe = load_recipe(args.recipe)
    if args.device:
        recipe = replace(recipe, device=args.device)
    if args.seed is not None:
        recipe = replace(recipe, seed=args.seed)
    with _Progress(err, args.quiet or args.json) as progress:
        result = run_recipe(recipe, args.out, model=args.model, data=args.data, weights=args.weights, arch=args.arch,
                            model_options=parse_options(args.option), overwrite=args.overwrite,
                            on_event=progress)  # fmt: skip
    if args.json:
        print(json.dumps({"out": str(result.out), "stages": result.metrics, "artifacts": result.artifacts},
                         indent=2, default=str))  # fmt: skip
        return 0
    out.print(stage_table(result.metrics, f"{args.recipe} -> {args.out}"))
    for key, value in result.artifacts.items():
        out.print(f"{key}: {value}")
    return 0


def cmd_pack(args: argparse.Namespace, load: Any, out: Console) -> int:
    import deepslim as ds
    from deepslim._cli_prune import check_output
    from deepslim._io import atomic_path

    check_output(args, (".dsz",))
    model = load(args)
    from deepslim._cli_export import busy

    with busy(args, "encoding"):
        blob = ds.encode(model, huffman=not args.no_huffman)
    with atomic_path(args.output) as tmp:
        tmp.write_bytes(blob)
    info = ds.archive_info(blob)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        out.print(str(info), markup=False)
        out.print(f"wrote {args.output}")
    return 0


def cmd_unpack(args: argparse.Namespace, out: Console) -> int:
    import deepslim as ds
    from deepslim._cli_prune import check_output, default_input

    path = Path(args.archive)
    if not path.is_file():
        raise ArchiveError(f"archive {args.archive!r} does not exist")
    check_output(args, (".pt", ".pth", ".pt2"))
    data = path.read_bytes()
    model = ds.decode(data)
    x = default_input(model) if Path(args.output).suffix == ".pt2" else None
    if Path(args.output).suffix == ".pt2" and x is None:
        raise ConfigError(f"{args.archive} records no input shape, which a .pt2 program needs: unpack to a .pt "
                          "checkpoint")  # fmt: skip
    ds.save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps(ds.archive_info(data).to_dict(), indent=2))
    else:
        out.print(f"decoded {path} ({len(data):,} B) -> {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deepslim.demo import RECIPE, run_demo

    with _Progress(err, args.quiet or args.json) as progress:
        result = run_demo(args.out, epochs=args.epochs, seed=args.seed, device=args.device, overwrite=args.overwrite,
                          on_event=progress)  # fmt: skip
    before, after = result.before, result.after
    if args.json:
        print(json.dumps({"before": before, "after": after, "decoded_accuracy": result.decoded_accuracy,
                          "run": str(result.run.out)}, indent=2, default=str))  # fmt: skip
        return 0
    out.print(f"[bold]deepslim demo[/bold]: Deep Compression ({RECIPE}) of LeNet-5 on the scikit-learn digits")
    out.print(stage_table(result.run.metrics, "every stage, measured"))
    dev = args.device
    table = Table("", "trained", "compressed", "change", title="LeNet-5 before and after")
    rows = [
        ("test accuracy", f"{100 * before['accuracy']:.2f} %", f"{100 * after['accuracy']:.2f} %",
         f"{100 * (after['accuracy'] - before['accuracy']):+.2f} pp"),
        ("nonzero parameters", f"{before['nonzero_params']:,}", f"{after['nonzero_params']:,}",
         f"{before['nonzero_params'] / after['nonzero_params']:.1f}x fewer"),
        ("bytes on disk (.dsz archive)", _bytes(before["archive_bytes"]), _bytes(after["archive_bytes"]),
         f"{before['archive_bytes'] / after['archive_bytes']:.1f}x smaller"),
        ("MACs per image (dense kernels)", f"{before['macs']:,}", f"{after['macs']:,}",
         "same: masks do not skip work on dense kernels"),
        (f"energy per image on {dev} (est.)", f"{before['estimated_energy_uj']:.2f} uJ",
         f"{after['estimated_energy_uj']:.2f} uJ",
         f"{before['estimated_energy_uj'] / after['estimated_energy_uj']:.1f}x less"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"the archive {result.run.artifacts['archive']} decodes to a model with test accuracy "
              f"{100 * result.decoded_accuracy:.2f} % (bit-exact weights); run directory: {result.run.out}; "
              f"report: {result.run.artifacts['report']}")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report (cards, tables, charts) from run directories")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by deepslim compress / demo")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default="deepslim report")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deepslim.report import write_report

    result = write_report(args.runs, args.output, title=args.title)
    if args.json:
        print(json.dumps({"path": str(result.path), "runs": result.runs, "charts": result.charts,
                          "problems": list(result.problems)}, indent=2))  # fmt: skip
        return 0
    for problem in result.problems:
        err.print(f"warning: {problem}", markup=False)
    out.print(f"wrote {result.path}: {result.runs} run(s), {result.charts} charts")
    return 0
