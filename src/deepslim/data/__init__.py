"""Datasets: ``load_data(spec)`` returns a DataBundle of loaders, a calibration subset and an example input."""

from deepslim.data import builtin, files, real, sentences  # noqa: F401  (register the loaders)
from deepslim.data._bundle import LOADER_PREPROCESSING_ATTR, LOADER_TASK_ATTR, DataBundle, Preprocessing
from deepslim.data._registry import list_datasets, load_data, loader_default, register_dataset

__all__ = ["LOADER_PREPROCESSING_ATTR", "LOADER_TASK_ATTR", "DataBundle", "Preprocessing", "list_datasets", "load_data",
           "loader_default", "register_dataset"]
