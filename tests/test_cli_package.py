"""The cli package's plan: one module per command family, registered in one place, importing only the shared private
helpers (_common, _technique) and the library (no circle between command modules)."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import deepslim.cli as cli


def _command_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")]


def test_every_command_module_is_registered_once_and_registers_its_commands():
    registered = [m.__name__.rpartition(".")[2] for m in cli.COMMANDS]
    assert sorted(registered) == sorted(_command_modules()) and len(set(registered)) == len(registered)
    sub = cli.build_parser()._subparsers._group_actions[0]  # the COMMAND sub-parsers
    assert {"profile", "prune", "quantize", "models", "devices", "export", "bench", "compress", "pack", "unpack",
            "demo", "report", "search", "worker", "finetune-ondevice", "fit",
            "distill"} == set(sub.choices)  # fmt: skip
    assert all(callable(p.get_default("func")) for p in sub.choices.values())


def test_command_modules_import_no_other_command_module():
    folder = Path(cli.__file__).parent
    for name in _command_modules():
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepslim.cli"):
                # shared helpers live in private modules (_common, _technique); a command module is never imported
                assert (node.module or "").startswith("deepslim.cli._"), f"cli/{name}.py imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("deepslim.cli") for a in node.names), f"cli/{name}.py imports cli"
