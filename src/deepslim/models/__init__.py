"""The model zoo (plain PyTorch, no torchvision) and model loading.

Importing this package registers every architecture; ``list_models()`` lists them.
"""

from deepslim.models import hf, lenet, mobilenet, resnet, shufflenet, squeezenet, transformer, vgg  # noqa: F401  (register)
from deepslim.models._loading import is_factory_spec, load_model, load_state_into, save_model
from deepslim.models._registry import (
    ModelEntry,
    create_model,
    example_input,
    get_model_entry,
    list_models,
    options_for_data,
    recorded_example_input,
    register_model,
)

__all__ = [
    "ModelEntry",
    "create_model",
    "example_input",
    "get_model_entry",
    "is_factory_spec",
    "list_models",
    "load_model",
    "load_state_into",
    "options_for_data",
    "recorded_example_input",
    "register_model",
    "save_model",
]
