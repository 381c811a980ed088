"""A searched policy as an ordinary recipe — the YAML a person writes by hand, run again by ``deepslim compress``.

The policy becomes two stages in the order the search built and judged it: channel pruning with one ratio per group
(``overrides`` on each group's first layer) followed by the same short fine-tune, then int8 quantization with the
float layers kept float (``overrides: LAYER: null``). ``deepslim search`` reads it with ``Recipe.from_dict``
(checked, every setting made explicit) and saves it atomically: an interrupted search leaves no half-written recipe.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from deepslim._io import atomic_path
from deepslim.search.space import Policy, SearchSpace


def policy_recipe(space: SearchSpace, policy: Policy, *, finetune_epochs: int = 1, lr: float = 1e-3, seed: int = 0,
                  model: str | None = None, data: str | None = None,
                  description: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The recipe (as a dict) that rebuilds ``policy``'s model from the dense one."""
    prune, quant = space.configs(policy)
    stages: list[dict[str, Any]] = []
    if prune is not None:
        stages.append({"prune": {"method": "channel", "ratio": 0.0, "round_to": 1,
                                 "overrides": {name: ratio for name, ratio in prune.overrides},
                                 "epochs": finetune_epochs, "lr": lr}})  # fmt: skip
    elif finetune_epochs > 0:
        stages.append({"finetune": {"epochs": finetune_epochs, "lr": lr}})
    if quant is not None:
        stages.append({"quantize": {"method": "linear", "bits": 8,
                                    "overrides": {name: None for name, _ in quant.overrides}}})  # fmt: skip
    if not stages:  # the dense policy: nothing to do but keep the file a valid recipe
        stages.append({"encode": {}})
    doc: dict[str, Any] = {}
    if description:
        doc["description"] = description
    if model is not None:
        doc["model"] = model
    if data is not None:
        doc["data"] = data
    doc["seed"] = seed
    doc["stages"] = stages
    return doc


def write_recipe(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Write a recipe as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
