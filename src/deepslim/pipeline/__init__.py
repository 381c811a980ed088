"""Recipes: ordered compression stages, run with every stage measured and saved in a run directory."""

from deepslim.pipeline._pairing import load_for_data
from deepslim.pipeline.measurement import Measurement, measure
from deepslim.pipeline.recipe import STAGES, Recipe, StageSpec, list_recipes, load_recipe
from deepslim.pipeline.run import RunResult, check_run_dir, run_recipe

__all__ = ["STAGES", "Measurement", "Recipe", "RunResult", "StageSpec", "check_run_dir", "list_recipes",
           "load_for_data", "load_recipe", "measure", "run_recipe"]
