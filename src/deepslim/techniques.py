"""The technique registry: each compression technique is registered once, as a name, a config class and a verb.

Recipes, the CLI, sensitivity analysis and search all look techniques up here, so a technique added with one
:func:`register_technique` call works everywhere a built-in one does (docs/extending.md). The built-in techniques
are registered in :mod:`deepslim.compress.techniques` (imported with :mod:`deepslim.compress`, hence by
``import deepslim``); this module knows none of them and imports nothing above :mod:`deepslim.config` and
:mod:`deepslim.errors`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepslim._io import import_file
from deepslim.config import Config
from deepslim.errors import ConfigError, DeepSlimError

CONTEXT_KEYS = ("example_input", "calib_data", "data")
"""What a verb may ask for by naming a keyword parameter (see :class:`Technique`)."""

RESERVED_KEYS = frozenset({"method", "epochs", "lr", "schedule", "rounds", "type"})
"""Keys a recipe stage uses for itself; a technique's config may not have fields of these names."""

RESERVED_KINDS = frozenset({"train", "finetune", "distill", "encode", "export", "input"})
"""Stage names a recipe keeps for its training and recovery stages; no technique kind may take one."""

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Technique:
    """A registered technique: ``name``, its frozen config class, its verb, its ``kind`` and a one-line description.

    **How a verb is called.** Every caller (recipes, the CLI, sensitivity, search) calls
    ``technique.apply(model, config, example_input=..., calib_data=..., data=...)``, which calls
    ``verb(model, config, **context)`` where ``context`` holds only those of ``example_input`` (one input batch,
    for tracing and shapes), ``calib_data`` (an iterable of (inputs, labels) batches, a few hundred examples) and
    ``data`` (the whole :class:`~deepslim.data.DataBundle`) that the verb names as keyword parameters. So a verb
    takes only what it needs (``cluster_(model, config)``; ``prune_(model, config, *, example_input, calib_data)``)
    and a verb that needs something the caller does not have gets None and must say so with a ``ConfigError``.
    The verb changes ``model`` in place; what it returns (the model, or a result object) is passed back.

    ``kind`` groups techniques the way recipes and commands do ("prune", "quantize", "cluster", "factorize",
    "tokens", or a kind of your own): a recipe stage ``- prune: {method: magnitude, ...}`` names a kind and, by
    ``method``, a technique of that kind; the first technique registered with a kind is its default method.
    ``lr`` is the default learning rate of the fine-tuning a recipe stage may run after it. ``replaces_layers``
    says the verb swaps layers for new ones with other names (factorization), so later stages cannot be checked
    against the input model's layer names, and the zoo cannot rebuild the result (no ``.dsz`` archive).
    ``layers(model, config, example_input)``, when given, names the layers a per-layer override of the technique
    addresses (what sensitivity analysis and search vary one at a time).
    """

    name: str
    config: type[Config]
    verb: Callable[..., Any]
    kind: str
    description: str
    lr: float = 1e-3
    replaces_layers: bool = False
    layers: Callable[..., list[str]] | None = None
    context: frozenset[str] = field(default=frozenset(), compare=False)

    def apply(self, model: Any, config: Config, *, example_input: Any = None, calib_data: Any = None,
              data: Any = None) -> Any:  # fmt: skip
        """Run the verb on ``model`` with ``config``, giving it the parts of the context it asks for."""
        if not isinstance(config, self.config):
            raise ConfigError(f"technique {self.name!r} takes a {self.config.__name__}, not {type(config).__name__}")
        given = {"example_input": example_input, "calib_data": calib_data, "data": data}
        return self.verb(model, config, **{k: v for k, v in given.items() if k in self.context})

    def candidates(self, model: Any, config: Config, example_input: Any = None) -> list[str]:
        """The layers a per-layer override of this technique addresses (``ConfigError`` when it names none)."""
        if self.layers is None:
            raise ConfigError(f"technique {self.name!r} does not name the layers it works on (register it with "
                              "layers=...), so it cannot be varied layer by layer")  # fmt: skip
        return list(self.layers(model, config, example_input))

    def config_from_dict(self, values: Mapping[str, Any]) -> Config:
        """The technique's config from plain JSON values (a ``ConfigError`` names a wrong key and the technique)."""
        try:
            return self.config.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None


_REGISTRY: dict[str, Technique] = {}


def register_technique(name: str, config_cls: type[Config], verb: Callable[..., Any], *, kind: str,
                       description: str = "", lr: float = 1e-3, replaces_layers: bool = False,
                       layers: Callable[..., list[str]] | None = None) -> Technique:  # fmt: skip
    """Register a technique once under ``name`` (lower case, digits, ``_``) and return its record.

    ``config_cls`` must be a frozen, keyword-only dataclass deriving :class:`deepslim.config.Config` (it gets JSON
    round trips and checked ``from_dict``); ``verb(model, config, **context)`` is called as :class:`Technique`
    describes. A name registered twice, a config class registered under two names, or a config field that a recipe
    stage keeps for itself (``epochs``, ``lr``, ``method``, ...) is a ``ConfigError``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a technique name is lower case letters, digits and '_', starting with a letter; got "
                          f"{name!r}")  # fmt: skip
    if name in _REGISTRY:
        raise ConfigError(f"technique {name!r} is already registered ({_REGISTRY[name].config.__name__}); choose "
                          "another name")  # fmt: skip
    _check_config_class(name, config_cls)
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise ConfigError(f"technique {name!r}: kind must be a lower-case word like 'prune', got {kind!r}")
    if kind in RESERVED_KINDS:
        raise ConfigError(f"technique {name!r}: kind {kind!r} is a recipe's own stage; choose another kind")
    if not callable(verb):
        raise ConfigError(f"technique {name!r}: its verb must be callable, got {verb!r}")
    params = inspect.signature(verb).parameters
    context = frozenset(k for k in CONTEXT_KEYS if k in params
                        or any(p.kind is p.VAR_KEYWORD for p in params.values()))  # fmt: skip
    technique = Technique(name=name, config=config_cls, verb=verb, kind=kind,
                          description=description or _summary(config_cls), lr=float(lr),
                          replaces_layers=replaces_layers, layers=layers, context=context)  # fmt: skip
    _REGISTRY[name] = technique
    return technique


def _check_config_class(name: str, config_cls: type[Config]) -> None:
    import dataclasses

    if not (isinstance(config_cls, type) and issubclass(config_cls, Config) and dataclasses.is_dataclass(config_cls)):
        raise ConfigError(f"technique {name!r}: its config must be a dataclass deriving deepslim.config.Config, got "
                          f"{config_cls!r}")  # fmt: skip
    params = getattr(config_cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise ConfigError(f"technique {name!r}: {config_cls.__name__} must be @dataclass(frozen=True, kw_only=True)")
    owner = next((t.name for t in _REGISTRY.values() if t.config is config_cls), None)
    if owner is not None:
        raise ConfigError(f"technique {name!r}: {config_cls.__name__} is already the config of {owner!r}")
    clash = sorted(RESERVED_KEYS & {f.name for f in dataclasses.fields(config_cls)})
    if clash:
        raise ConfigError(f"technique {name!r}: {config_cls.__name__} has a field {clash[0]!r}, which recipe stages "
                          f"keep for themselves ({', '.join(sorted(RESERVED_KEYS))}); rename it")  # fmt: skip


def _summary(config_cls: type) -> str:
    """The first line of the config's docstring ("" for dataclass's generated signature)."""
    doc = (config_cls.__doc__ or "").strip()
    return "" if doc.startswith(f"{config_cls.__name__}(") else doc.split("\n")[0].strip()


def get_technique(name: str) -> Technique:
    """The technique registered as ``name``; an unknown name is a ``ConfigError`` listing the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown technique {name!r} (registered: {', '.join(_REGISTRY)})") from None


def list_techniques(kind: str | None = None) -> list[str]:
    """Names of the registered techniques (of one ``kind`` if given), in registration order."""
    return [n for n, t in _REGISTRY.items() if kind is None or t.kind == kind]


def technique_for(config: Config) -> Technique:
    """The technique whose config class ``config`` is an instance of."""
    for technique in _REGISTRY.values():
        if type(config) is technique.config:
            return technique
    raise ConfigError(f"{type(config).__name__} is the config of no registered technique (registered: "
                      f"{', '.join(t.config.__name__ for t in _REGISTRY.values())})")  # fmt: skip


def kinds() -> list[str]:
    """The kinds of the registered techniques, in registration order."""
    return list(dict.fromkeys(t.kind for t in _REGISTRY.values()))


def default_technique(kind: str) -> Technique:
    """The default method of ``kind``: the first technique registered with it."""
    found = next((t for t in _REGISTRY.values() if t.kind == kind), None)
    if found is None:
        raise ConfigError(f"no technique of kind {kind!r} is registered (kinds: {', '.join(kinds())})")
    return found


_PLUGINS: dict[Path, Any] = {}


def load_plugin(path: str | Path) -> None:
    """Import a Python file that registers techniques (``deepslim ... --plugin FILE.py``), once per process.

    The file is run as ordinary Python code, so name only files you trust. A file that is missing or that raises
    is a ``ConfigError`` naming it.
    """
    file = Path(path).resolve()
    if file in _PLUGINS:
        return
    if not file.is_file() or file.suffix != ".py":
        raise ConfigError(f"plugin {str(path)!r} is not a Python file (.py): give the file that calls "
                          "register_technique")  # fmt: skip
    module_name = f"deepslim_plugin_{len(_PLUGINS)}_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}"
    try:
        module = import_file(file, module_name)
    except DeepSlimError as exc:
        raise ConfigError(f"plugin {path}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"plugin {path} failed on import: {type(exc).__name__}: {exc}") from None
    if module is None:
        raise ConfigError(f"plugin {str(path)!r} cannot be imported")
    _PLUGINS[file] = module


__all__ = ["CONTEXT_KEYS", "RESERVED_KEYS", "RESERVED_KINDS", "Technique", "default_technique", "get_technique",
           "kinds", "list_techniques", "load_plugin", "register_technique", "technique_for"]  # fmt: skip
