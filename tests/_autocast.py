"""Whether CPU autocast was on in the passes of some modules (a spy for the distillers' ``precision``)."""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def autocast_seen(**modules: nn.Module) -> Iterator[dict[str, list[bool]]]:
    """Yields {name: [autocast on?, one per forward pass of that module]} while the block runs."""
    seen: dict[str, list[bool]] = {name: [] for name in modules}
    hooks = [module.register_forward_pre_hook(lambda *_, log=seen[name]: log.append(torch.is_autocast_enabled("cpu")))
             for name, module in modules.items()]  # fmt: skip
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()
