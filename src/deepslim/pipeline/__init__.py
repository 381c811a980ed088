"""Recipes: ordered compression stages, run with every stage measured and saved in a run directory."""

from deepslim.pipeline.recipe import STAGES, Recipe, StageSpec, list_recipes, load_recipe
from deepslim.pipeline.run import RunResult, measure, run_recipe

__all__ = ["STAGES", "Recipe", "RunResult", "StageSpec", "list_recipes", "load_recipe", "measure", "run_recipe"]
