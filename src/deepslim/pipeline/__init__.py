"""Recipes: technique configs and recovery stages as data, run with every stage measured and saved in a run
directory."""

from deepslim.pipeline._pairing import load_for_data
from deepslim.pipeline.measurement import Measurement, measure
from deepslim.pipeline.recipe import Recipe, list_recipes, load_recipe
from deepslim.pipeline.run import RunResult, check_run_dir, run_recipe
from deepslim.pipeline.stages import (
    DistillStage,
    EncodeStage,
    ExportStage,
    FinetuneStage,
    Stage,
    TechniqueStage,
    TrainStage,
)

__all__ = ["DistillStage", "EncodeStage", "ExportStage", "FinetuneStage", "Measurement", "Recipe", "RunResult",
           "Stage", "TechniqueStage", "TrainStage", "check_run_dir", "list_recipes", "load_for_data", "load_recipe",
           "measure", "run_recipe"]  # fmt: skip
