"""Training, evaluation and recovery after compression (fine-tuning, distillation)."""

from deepslim.train.distill import KDConfig, distill, kd_loss
from deepslim.train.loop import EvalResult, FitResult, Optimizer, evaluate, fidelity, fit

__all__ = ["EvalResult", "FitResult", "KDConfig", "Optimizer", "distill", "evaluate", "fidelity", "fit", "kd_loss"]
