"""The demo: Deep Compression of LeNet-5 on the scikit-learn digits, end to end.

Trains LeNet-5, profiles it on a small device, then runs the built-in ``deep-compression-lenet5`` recipe (gradual
magnitude pruning, trained k-means weight sharing, Huffman coding into a ``.dsz`` archive) and checks that the
archive decodes to a model with the same accuracy. Everything it reports is measured in this run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepslim.compress.coding import decode
from deepslim.data import load_data
from deepslim.pipeline.recipe import load_recipe
from deepslim.pipeline.run import Event, RunResult, check_run_dir, run_recipe
from deepslim.pipeline.stages import TrainStage
from deepslim.train import evaluate

RECIPE = "deep-compression-lenet5"


@dataclass(frozen=True)
class DemoResult:
    run: RunResult
    decoded_accuracy: float  # accuracy of the model decoded from the archive file

    @property
    def before(self) -> dict[str, Any]:
        return self.run.stage("train")

    @property
    def after(self) -> dict[str, Any]:
        return self.run.metrics[-1]


def run_demo(out: str | Path, *, epochs: int | None = None, seed: int = 0, device: str = "cortex-m7",
             overwrite: bool = False, on_event: Event | None = None) -> DemoResult:  # fmt: skip
    """Run the Deep Compression recipe on LeNet-5/digits into run directory ``out`` (``overwrite``: replacing an
    earlier run there)."""
    check_run_dir(out, overwrite=overwrite)  # before the recipe is even read: an existing --out is refused at once
    recipe = load_recipe(RECIPE)
    recipe = replace(recipe, seed=seed, device=device)
    if epochs is not None:  # a shorter (or longer) initial training
        stages = tuple(replace(s, epochs=epochs) if isinstance(s, TrainStage) and s.kind == "train" else s
                       for s in recipe.stages)  # fmt: skip
        recipe = replace(recipe, stages=stages)
    run = run_recipe(recipe, out, overwrite=overwrite, on_event=on_event)
    archive = Path(run.artifacts["archive"])
    decoded = decode(archive.read_bytes())
    data = load_data(recipe.data or "digits", seed=seed)
    return DemoResult(run=run, decoded_accuracy=evaluate(decoded, data.test).accuracy)
