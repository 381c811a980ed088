"""The model zoo (plain PyTorch, no torchvision) and model loading.

Importing this package registers every architecture; ``list_models()`` lists them.
"""

from deepslim.models import lenet, mobilenet, resnet, shufflenet, squeezenet, transformer, vgg  # noqa: F401  (register)
from deepslim.models._loading import load_model, load_state_into, save_model
from deepslim.models._registry import (
    ModelEntry,
    create_model,
    example_input,
    get_model_entry,
    list_models,
    options_for_data,
    register_model,
)

__all__ = [
    "ModelEntry",
    "create_model",
    "example_input",
    "get_model_entry",
    "list_models",
    "load_model",
    "load_state_into",
    "options_for_data",
    "register_model",
    "save_model",
]
