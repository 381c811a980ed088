"""A searched policy as an ordinary recipe — the YAML a person writes by hand, run again by ``deepslim compress``.

The policy becomes stages in the order the search built and judged it: the residual blocks it drops (``prune: {method:
depth, blocks: [...]}``), channel pruning with one ratio per group
(``overrides`` on each group's first layer), unstructured magnitude pruning of the layers a policy made sparse,
followed by the same recovery — the short fine-tune, or distillation from the dense model when the policy chose a
temperature, or, with zero epochs, batch-norm re-estimation (``recalibrate: {method: bn}``) — then k-means weight
sharing of the layers given bits (``cluster``), then int8 quantization with the float layers kept float
(``overrides: LAYER: null``); with a size objective, the ``encode`` stage writes the archive judged. A policy's
own recovery values (a search over them, HPO) take the place of the defaults given here.
``deepslim search`` reads it with ``Recipe.from_dict`` (checked, every setting made explicit) and saves it
atomically: an interrupted search leaves no half-written recipe.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from deepslim._io import atomic_path
from deepslim.search.recovery import BN_BATCHES
from deepslim.search.space import Policy, SearchSpace


def policy_recipe(space: SearchSpace, policy: Policy, *, finetune_epochs: int = 1, lr: float = 1e-3, seed: int = 0,
                  model: str | None = None, data: str | None = None,
                  description: str | None = None, accept_low_fidelity: bool = False,
                  temperature: float | None = None, encode: bool = False,
                  device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The recipe (as a dict) that rebuilds ``policy``'s model from the dense one (as
    :class:`deepslim.search.evaluate.Evaluator` builds a finalist: ``finetune_epochs`` and ``lr`` are the defaults
    that the policy's own ``recovery`` values replace). ``accept_low_fidelity``: the quantize stage accepts a model
    whose int8 outputs disagree with its float ones, as the search that judged the policy did. ``temperature``: the
    default recovery distills from the dense model at it (the search's ``temperature``), unless the policy chose.
    ``encode``: end with the ``encode`` stage (the ``.dsz`` archive whose bytes a size objective or budget judged).
    ``device``: the device profile the search estimated energy on (None: the recipe names none)."""
    depth = space.depth_config(policy)
    prune, quant = space.configs(policy)
    sparse, shared = space.weight_configs(policy)
    rec = {"finetune_epochs": finetune_epochs, "lr": lr, "temperature": temperature, **policy.recovery}
    epochs, lr, temperature = int(rec["finetune_epochs"]), float(rec["lr"]), rec["temperature"]
    distilling = temperature is not None and epochs > 0
    stages: list[dict[str, Any]] = []
    if depth is not None:  # blocks first: the channel groups are those of the dropped model
        stages.append({"prune": {"method": "depth", "blocks": list(depth.blocks),
                                 "epochs": 0 if distilling or prune is not None or sparse is not None else epochs,
                                 "lr": lr}})  # fmt: skip
    if prune is not None:  # the last prune stage fine-tunes (unless a distill stage follows)
        stages.append({"prune": {"method": "channel", "ratio": 0.0, "round_to": 1,
                                 "overrides": {name: ratio for name, ratio in prune.overrides},
                                 "epochs": 0 if distilling or sparse is not None else epochs, "lr": lr}})  # fmt: skip
    if sparse is not None:
        stages.append({"prune": {"method": "magnitude", "sparsity": 0.0, "overrides": dict(sparse.overrides),
                                 "epochs": 0 if distilling else epochs, "lr": lr}})  # fmt: skip
    pruned = depth is not None or prune is not None or sparse is not None
    if epochs == 0 and pruned:  # no training to refresh the stale statistics
        stages.append({"recalibrate": {"method": "bn", "batches": BN_BATCHES}})
    if distilling:
        stages.append({"distill": {"epochs": epochs, "teacher": "trained", "lr": lr,
                                   "temperature": float(temperature)}})  # fmt: skip
    elif not pruned and epochs > 0:
        stages.append({"finetune": {"epochs": epochs, "lr": lr}})
    if shared is not None:  # weight sharing of the float layers, before int8 quantizes the others
        stages.append({"cluster": {"method": "kmeans", "bits": shared.bits, "overrides": dict(shared.overrides),
                                   "epochs": 0}})  # fmt: skip
    if quant is not None:
        floats = {name: None for name, _ in quant.overrides}
        stage: dict[str, Any] = {"method": "linear", "bits": 8, "overrides": floats}
        if accept_low_fidelity:
            stage["accept_low_fidelity"] = True
        stages.append({"quantize": stage})
    if encode or not stages:  # the archive the size was judged by; the dense policy: keep the file a valid recipe
        stages.append({"encode": {}})
    doc: dict[str, Any] = {}
    if description:
        doc["description"] = description
    if model is not None:
        doc["model"] = model
    if data is not None:
        doc["data"] = data
    if device is not None:
        doc["device"] = device
    doc["seed"] = seed
    doc["stages"] = stages
    return doc


def write_recipe(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Write a recipe as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
