"""Choosing compression policies: per-layer sensitivity, and a policy search under a measured budget (issue 14)."""

from deepslim.search.budget import BUDGETS, OBJECTIVES, Budget, as_budgets, check_objectives
from deepslim.search.engine import SearchResult, search
from deepslim.search.evaluate import Candidate
from deepslim.search.int8_slices import Int8Slicer
from deepslim.search.latency import LatencyTable, LayerKey, TableCheck, check_table, kendall_tau
from deepslim.search.node_table import NodeTable
from deepslim.search.recipe import policy_recipe, write_recipe
from deepslim.search.recovery import proxy_batches, reestimate_bn_, short_finetune_
from deepslim.search.sensitivity import Sensitivity, sensitivity
from deepslim.search.space import GroupChoice, Policy, SearchSpace
from deepslim.search.speed_moves import SpeedMoves, SpeedMovesConfig, speed_moves
from deepslim.search.strategies import STRATEGIES

__all__ = ["BUDGETS", "OBJECTIVES", "STRATEGIES", "Budget", "Candidate", "GroupChoice", "Int8Slicer", "LatencyTable",
           "LayerKey", "NodeTable", "Policy", "SearchResult", "SearchSpace", "Sensitivity", "SpeedMoves",
           "SpeedMovesConfig", "TableCheck", "as_budgets", "check_objectives", "check_table", "kendall_tau",
           "policy_recipe", "proxy_batches", "reestimate_bn_", "search", "sensitivity", "short_finetune_",
           "speed_moves", "write_recipe"]
