"""Training, evaluation and recovery after compression (fine-tuning, distillation)."""

from deepslim.train.distill import KDConfig, distill, kd_loss
from deepslim.train.distributed import distill_ddp, fit_ddp
from deepslim.train.loop import EvalResult, FitResult, Optimizer, evaluate, fidelity, fit
from deepslim.train.student import EncoderKDConfig, distill_encoder
from deepslim.train.token_thresholds import TokenThresholdConfig, kept_shares, learn_token_thresholds

__all__ = ["EncoderKDConfig", "EvalResult", "FitResult", "KDConfig", "Optimizer", "TokenThresholdConfig", "distill",
           "distill_ddp", "distill_encoder", "evaluate", "fidelity", "fit", "fit_ddp", "kd_loss", "kept_shares",
           "learn_token_thresholds"]  # fmt: skip
