"""DataBundle: what every dataset loader returns, and the shared split/normalize/loader helpers.

Loaders standardise inputs with the training set's statistics; :class:`Preprocessing` records that, so a model
saved, archived or exported from a run carries it, and a deployed model is fed what it was trained on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from deepslim._preprocessing import Preprocessing
from deepslim.errors import DataError
from deepslim.tasks import Classification, Task

# set on each loader make_bundle builds: the Preprocessing its inputs went through (None: raw), so that
# evaluate(model, bundle.test) knows it even without the bundle
LOADER_PREPROCESSING_ATTR = "deepslim_preprocessing"
# and on every loader of a bundle: its Task, so that a check given only the loader (quantization's fidelity check
# on calib_data) knows whether the outputs are class scores
LOADER_TASK_ATTR = "deepslim_task"


@dataclass(frozen=True)
class DataBundle:
    """Train/val/test loaders, a calibration loader (a small slice of training data) and an example input.

    ``task`` says what the batches mean (classification by default; see :mod:`deepslim.tasks`).
    """

    name: str
    train: DataLoader
    val: DataLoader
    test: DataLoader
    calib: DataLoader
    example_input: Any  # one batch of size 1, as the model sees it: a tensor, or a tuple/dict of inputs
    num_classes: int  # 0 for tasks without classes (regression, embeddings)
    class_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None  # None: inputs are fed as stored
    task: Task = Classification()

    def __post_init__(self) -> None:
        for loader in (self.train, self.val, self.test, self.calib):
            # a loader shared with another bundle keeps the task it was tagged with first; a list cannot be tagged
            if getattr(loader, LOADER_TASK_ATTR, None) is None:
                with contextlib.suppress(AttributeError):
                    setattr(loader, LOADER_TASK_ATTR, self.task)

    @property
    def input_shape(self) -> tuple[int, ...]:
        from deepslim.tasks import first_input

        return tuple(first_input(self.example_input).shape[1:])

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} {len(getattr(self, k).dataset)}" for k in ("train", "val", "test", "calib"))
        what = f"{self.num_classes} classes" if self.task.has_classes else self.task.name
        return f"{self.name}: {sizes}; input {tuple(self.input_shape)}; {what}"


def stratified_split(y: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices (train, val, test) with each class spread in proportion; ``fractions`` = (val, test)."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def make_bundle(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray, *, batch_size: int, calib_size: int, seed: int,
                class_names: tuple[str, ...] = (), normalize: bool = True, num_classes: int | None = None,
                info: dict[str, Any] | None = None, task: Task | None = None) -> DataBundle:  # fmt: skip
    """Normalize with the training set's per-channel statistics and wrap the arrays in loaders.

    Targets are class indices (int64) for tasks with classes, real values (float32) otherwise.
    """
    task = task or Classification()
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{name}: the training and test sets must not be empty")
    x_train, x_val, x_test = (np.asarray(a, dtype=np.float32) for a in (x_train, x_val, x_test))
    preprocessing = None
    if normalize:
        axes = (0, *range(2, x_train.ndim)) if x_train.ndim > 2 else (0, 1)
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True) + 1e-6
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
        preprocessing = Preprocessing(mean=tuple(float(v) for v in mean.reshape(-1)),
                                      std=tuple(float(v) for v in std.reshape(-1)),
                                      channel_dim=1)  # fmt: skip
    if task.has_classes:
        n_cls = num_classes or int(max(y_train.max(), y_test.max(), y_val.max() if len(y_val) else 0)) + 1
    else:
        n_cls = num_classes or 0
    y_dtype = np.int64 if task.has_classes else np.float32
    gen = torch.Generator().manual_seed(seed)

    def loader(x: np.ndarray, y: np.ndarray, shuffle: bool) -> DataLoader:
        ds = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, y_dtype)))
        dl = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None)
        setattr(dl, LOADER_PREPROCESSING_ATTR, preprocessing)
        return dl

    calib_idx = np.random.default_rng(seed).permutation(len(x_train))[: min(calib_size, len(x_train))]
    return DataBundle(
        name=name,
        train=loader(x_train, y_train, True),
        val=loader(x_val, y_val, False),
        test=loader(x_test, y_test, False),
        calib=loader(x_train[calib_idx], y_train[calib_idx], False),
        example_input=torch.from_numpy(np.ascontiguousarray(x_test[:1])),
        num_classes=n_cls,
        class_names=class_names,
        info=info or {},
        preprocessing=preprocessing,
        task=task,
    )
