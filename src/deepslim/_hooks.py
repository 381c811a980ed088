"""Forward hooks that live for one block: registered on named modules, removed on the way out even when the forward
raises — a measurement that fails must not leave its hooks on the user's model (the next forward would run them).

Hooks that are part of a converted model (a quantization point, a half-precision cast) are not for this: they stay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from torch import nn

ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]
"""``hook(module, args, output)``; returning something other than None replaces the output."""
PreHook = Callable[[nn.Module, tuple[Any, ...]], Any]
"""``hook(module, args)``; returning something other than None replaces the arguments."""


@contextlib.contextmanager
def hooked(modules: Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]], *,
           forward: Callable[[str], ForwardHook] | None = None,
           pre: Callable[[str], PreHook] | None = None) -> Iterator[None]:  # fmt: skip
    """For the block, on each named module (a mapping or ``(name, module)`` pairs such as ``named_modules()``): the
    pre-hook ``pre(name)`` and the forward hook ``forward(name)``, each where given; all removed on exit."""
    pairs = modules.items() if isinstance(modules, Mapping) else modules
    handles = []
    try:
        for name, m in pairs:
            if pre is not None:
                handles.append(m.register_forward_pre_hook(pre(name)))
            if forward is not None:
                handles.append(m.register_forward_hook(forward(name)))
        yield
    finally:
        for h in handles:
            h.remove()
