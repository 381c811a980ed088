"""Training, evaluation and (later) recovery after compression."""

from deepslim.train.loop import EvalResult, FitResult, Optimizer, evaluate, fit

__all__ = ["EvalResult", "FitResult", "Optimizer", "evaluate", "fit"]
