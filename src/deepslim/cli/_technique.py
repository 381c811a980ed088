"""What the technique commands (prune, quantize) share: the method looked up in the technique registry, its config
built from the flags that apply to it (a flag that does not apply is an error, never silently ignored), ``--set
KEY=VALUE`` for any config field, and ``--plugin FILE.py`` for a user's own techniques."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from deepslim.config import Config
from deepslim.errors import ConfigError
from deepslim.techniques import Technique, get_technique, list_techniques, load_plugin


def add_technique_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="any setting of the method's config (value read as YAML), e.g. --set scope=global")  # fmt: skip
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="a Python file that registers techniques (register_technique); its methods become "
                   "available to --method (the file is run: name only files you trust)")  # fmt: skip


def resolve_method(args: argparse.Namespace, kinds: Sequence[str]) -> Technique:
    """Load ``--plugin`` files, then the technique that ``--method`` names, which must be of one of ``kinds``."""
    for path in args.plugin:
        load_plugin(path)
    names = [n for kind in kinds for n in list_techniques(kind)]
    if args.method not in names:
        raise ConfigError(f"--method {args.method!r} is not a {' or '.join(kinds)} technique (choose from "
                          f"{', '.join(names)}; --plugin FILE.py adds your own)")  # fmt: skip
    return get_technique(args.method)


def build_config(technique: Technique, args: argparse.Namespace, flags: Mapping[str, dict[str, Any]],
                 defaults: Mapping[str, Any]) -> Config:  # fmt: skip
    """The technique's config from the flags given on the command line.

    ``flags`` maps a flag as typed (``--ratio``) to the config fields it sets; a flag given for a method whose
    config lacks those fields is a ``ConfigError`` naming the flag and the fields the method has. ``defaults`` are
    the command's documented defaults, used for the fields the method has and no flag or ``--set`` gave.
    """
    from deepslim.cli._common import parse_options

    fields = [f.name for f in dataclasses.fields(technique.config)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for flag, sets in flags.items():
        missing = [k for k in sets if k not in fields]
        if missing:
            owners = [n for n in list_techniques(technique.kind) if set(sets) <= _fields(get_technique(n))]
            hint = f"; {flag} is for --method {' or '.join(owners)}" if owners else ""
            raise ConfigError(f"{flag} does not apply to --method {technique.name}, whose settings are "
                              f"{', '.join(fields)} (--set KEY=VALUE){hint}")  # fmt: skip
        values.update(sets)
    values.update(parse_options(args.settings))
    for key, value in defaults.items():
        if key in fields and key not in values:
            values[key] = value
    return technique.config_from_dict(values)


def _fields(technique: Technique) -> set[str]:
    return {f.name for f in dataclasses.fields(technique.config)}  # type: ignore[arg-type]


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether a flag was given (flags of these commands default to None or to an empty list)."""
    value = getattr(args, dest)
    return value is not None and value != [] and value is not False
