"""``deepslim compress`` (run a recipe), ``pack`` / ``unpack`` (the .dsz archive)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepslim.cli._common import (
    Progress,
    add_model_args,
    busy,
    check_output,
    default_input,
    load,
    out,
    parse_options,
    positive_int,
    stage_table,
)
from deepslim.errors import ArchiveError, ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="run a compression recipe; every stage measured, saved in a run directory")
    add_model_args(p, optional=True)
    p.add_argument("--recipe", required=True, help="recipe YAML file, or a built-in recipe's name")
    p.add_argument("--data", help="dataset spec (default: the recipe's)")
    p.add_argument("--out", required=True, help="run directory (metrics.json, stage models, archive)")
    p.add_argument("--device", help="device for the energy and latency estimates (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's)")
    p.add_argument("--nproc", type=positive_int, help="run the train, finetune and distill stages data-parallel "
                   "on N processes (torchrun, gloo; default: the recipe's nproc, 1)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (as a whole, once the "
                   "new run completes)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in --out from its last "
                   "finished stage (same recipe and settings; the earlier stages are not run again)")  # fmt: skip
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="a Python file that registers "
                   "techniques the recipe uses (run as code: name only files you trust)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print metrics.json's stages as JSON")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("pack", help="encode a model into a compact .dsz archive (sparse, shared, Huffman-coded)")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="archive path (.dsz)")
    p.add_argument("--no-huffman", action="store_true", help="fixed-width streams instead of Huffman codes")
    p.add_argument("--json", action="store_true", help="print the byte accounting as JSON")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="decode a .dsz archive into a checkpoint that load_model reads")
    p.add_argument("archive", help=".dsz archive")
    p.add_argument("-o", "--output", required=True, help="checkpoint (.pt) or torch.export program (.pt2)")
    p.add_argument("--arch", help="the architecture of an archive written from a user model: file.py:factory "
                   "(never imported unless named here), or a zoo name")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the archive's byte accounting as JSON")
    p.set_defaults(func=cmd_unpack)


def cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from deepslim.pipeline import check_run_dir, load_recipe, run_recipe
    from deepslim.techniques import load_plugin

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    # refused before the recipe, data or model are read
    check_run_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    for path in args.plugin:
        load_plugin(path)
    recipe = load_recipe(args.recipe)
    if args.device:
        recipe = replace(recipe, device=args.device)
    if args.seed is not None:
        recipe = replace(recipe, seed=args.seed)
    if args.nproc is not None:
        recipe = replace(recipe, nproc=args.nproc)
    _register_report()
    with Progress(args.quiet or args.json) as progress:
        result = run_recipe(recipe, args.out, model=args.model, data=args.data, weights=args.weights, arch=args.arch,
                            model_options=parse_options(args.option), overwrite=args.overwrite,
                            resume=args.resume, on_event=progress)  # fmt: skip
    if args.json:
        print(json.dumps({"out": str(result.out), "stages": result.metrics, "artifacts": result.artifacts},
                         indent=2, default=str))  # fmt: skip
        return 0
    out.print(stage_table(result.metrics, f"{args.recipe} -> {args.out}"))
    for key, value in result.artifacts.items():
        out.print(f"{key}: {value}")
    return 0


def _register_report() -> None:
    """Every run writes report.html (the pipeline calls the writers registered with it; it does not import the
    report package, which sits above it)."""
    from deepslim.pipeline.run import register_run_file
    from deepslim.report import write_report

    register_run_file("report", "report.html", lambda run, dest, title: write_report([run], dest, title=title))


def cmd_pack(args: argparse.Namespace) -> int:
    from deepslim._io import atomic_path
    from deepslim.compress.coding import archive_info, encode

    check_output(args, (".dsz",))
    model = load(args)
    with busy(args, "encoding"):
        blob = encode(model, huffman=not args.no_huffman)
    with atomic_path(args.output) as tmp:
        tmp.write_bytes(blob)
    info = archive_info(blob)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        out.print(str(info), markup=False)
        out.print(f"wrote {args.output}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from deepslim.compress.coding import archive_info, decode
    from deepslim.models import save_model

    path = Path(args.archive)
    if not path.is_file():
        raise ArchiveError(f"archive {args.archive!r} does not exist")
    check_output(args, (".pt", ".pth", ".pt2"))
    data = path.read_bytes()
    model = decode(data, arch=args.arch, source=str(path))
    x = default_input(model) if Path(args.output).suffix == ".pt2" else None
    if Path(args.output).suffix == ".pt2" and x is None:
        raise ConfigError(f"{args.archive} records no input shape, which a .pt2 program needs: unpack to a .pt "
                          "checkpoint")  # fmt: skip
    save_model(model, args.output, example_input=x)
    if args.json:
        print(json.dumps(archive_info(data).to_dict(), indent=2))
    else:
        out.print(f"decoded {path} ({len(data):,} B) -> {args.output}")
    return 0
