"""The demo: train LeNet-5 on the scikit-learn digits, then report what it costs on a small device.

This is the first part of the story the full demo tells (train → profile → compress → verify); the compression
stages join it as they land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from deepslim.analysis import Profile, profile
from deepslim.data import DataBundle, load_data
from deepslim.models import create_model
from deepslim.train import EvalResult, FitResult, evaluate, fit


@dataclass(frozen=True)
class DemoResult:
    model: nn.Module
    data: DataBundle
    training: FitResult
    test: EvalResult
    profile: Profile


def run_demo(*, epochs: int = 20, seed: int = 0, device: str = "cortex-m7",
             on_epoch: Callable[[dict[str, float]], None] | None = None) -> DemoResult:  # fmt: skip
    """Train LeNet-5 on digits (8×8, 'same' padding), evaluate on the held-out test split, profile on ``device``."""
    torch.manual_seed(seed)
    data = load_data("digits", seed=seed)
    model = create_model("lenet5", num_classes=data.num_classes, in_channels=1, input_size=data.input_shape[-1])
    training = fit(model, data, epochs=epochs, lr=2e-3, seed=seed, on_epoch=on_epoch)
    test = evaluate(model, data.test)
    prof = profile(model, data.example_input, device=device, name="lenet5 (digits)")
    return DemoResult(model=model, data=data, training=training, test=test, profile=prof)
