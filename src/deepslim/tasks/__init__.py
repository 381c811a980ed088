"""Tasks: what a model's inputs and outputs mean, so training, evaluation, calibration and distillation work beyond
image classification.

A :class:`Task` splits a batch into model inputs and a target (``(x, y)``, ``(input_ids, attention_mask, y)`` or a
dict with ``labels``), calls the model with one or several inputs, picks the tensor it scores out of a tensor, tuple,
dict or Hugging Face ``ModelOutput``, and gives the loss, the metrics and a comparison with a reference model's
output (for distillation and fidelity checks). ``get_task("segmentation")`` or an instance with options.
"""

from deepslim.tasks._base import Inputs, Meter, Task, call_model, first_input, get_task, list_tasks, pick_output
from deepslim.tasks.dense import Embedding, Regression
from deepslim.tasks.labels import (
    Classification,
    LanguageModeling,
    Segmentation,
    SequenceClassification,
    TokenClassification,
)

__all__ = [
    "Classification", "Embedding", "Inputs", "LanguageModeling", "Meter", "Regression", "Segmentation",
    "SequenceClassification", "Task", "TokenClassification", "call_model", "first_input", "get_task", "list_tasks",
    "pick_output",
]  # fmt: skip
