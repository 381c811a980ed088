"""The model zoo (plain PyTorch, no torchvision) and model loading.

Importing this package registers every architecture; ``list_models()`` lists them. The attribute names under which
a model carries its records (``ARCH_ATTR``, ...) and the record helpers are public for the layers above, which must
not import this package's private modules; :mod:`deepslim.models.formats` is where they register file formats.
"""

from deepslim.models import hf, lenet, mobilenet, resnet, shufflenet, squeezenet, transformer, vgg  # noqa: F401  (register)
from deepslim.models._loading import (
    build_architecture,
    is_factory_spec,
    load_model,
    load_state_into,
    resize_like_,
    save_model,
)
from deepslim.models._records import (
    attach_preprocessing,
    check_records,
    fresh_architecture,
    model_records,
    preprocessing_record,
    set_records,
)
from deepslim.models._registry import (
    ARCH_ATTR,
    FACTORY_ATTR,
    INPUT_ATTR,
    PREPROCESSING_ATTR,
    ModelEntry,
    create_model,
    example_input,
    get_model_entry,
    input_of_shape,
    list_models,
    options_for_data,
    recorded_example_input,
    register_model,
)

__all__ = [
    "ARCH_ATTR",
    "FACTORY_ATTR",
    "INPUT_ATTR",
    "PREPROCESSING_ATTR",
    "ModelEntry",
    "attach_preprocessing",
    "build_architecture",
    "check_records",
    "create_model",
    "example_input",
    "fresh_architecture",
    "get_model_entry",
    "input_of_shape",
    "is_factory_spec",
    "list_models",
    "load_model",
    "load_state_into",
    "model_records",
    "options_for_data",
    "preprocessing_record",
    "recorded_example_input",
    "register_model",
    "resize_like_",
    "save_model",
    "set_records",
]
