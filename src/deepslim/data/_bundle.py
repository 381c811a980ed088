"""DataBundle: what every dataset loader returns, and the shared split/normalize/loader helpers.

Loaders standardise inputs with the training set's statistics; :class:`Preprocessing` records that, so a model
saved, archived or exported from a run carries it, and a deployed model is fed what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from deepslim.errors import DataError
from deepslim.tasks import Classification, Task

# set on each loader make_bundle builds: the Preprocessing its inputs went through (None: raw), so that
# evaluate(model, bundle.test) knows it even without the bundle
LOADER_PREPROCESSING_ATTR = "deepslim_preprocessing"


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """What a loader does to raw inputs before the model sees them: ``(x - mean) / std`` along ``channel_dim``.

    ``mean`` and ``std`` hold one value per channel (or one for all). Raw inputs are what the dataset stores
    (pixels scaled to [0, 1] for the image sets). Plain data: ``to_dict``/``from_dict`` round-trip through JSON.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_dim: int = 1

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise DataError(f"preprocessing needs as many std as mean values (got {len(self.mean)} and "
                            f"{len(self.std)})")  # fmt: skip
        if min(self.std) <= 0:
            raise DataError("preprocessing std values must be positive")
        if self.channel_dim < 1:
            raise DataError(f"preprocessing channel_dim must be at least 1 (0 is the batch), got {self.channel_dim}")

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        shape = [1] * x.ndim
        if len(self.mean) > 1:
            if x.ndim <= self.channel_dim or x.shape[self.channel_dim] != len(self.mean):
                raise DataError(f"preprocessing has {len(self.mean)} channels along dimension {self.channel_dim}; "
                                f"the input has shape {tuple(x.shape)}")  # fmt: skip
            shape[self.channel_dim] = len(self.mean)
        return tuple(shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input → what the model expects (integer inputs, e.g. uint8 pixels, are computed in float32)."""
        x = x if x.is_floating_point() else x.float()
        shape = self._shape(x)
        mean = torch.tensor(self.mean, dtype=x.dtype).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype).reshape(shape)
        return (x - mean) / std

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """What the model expects → raw input."""
        x = x if x.is_floating_point() else x.float()
        shape = self._shape(x)
        mean = torch.tensor(self.mean, dtype=x.dtype).reshape(shape)
        return x * torch.tensor(self.std, dtype=x.dtype).reshape(shape) + mean

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "standardize", "mean": list(self.mean), "std": list(self.std), "channel_dim": self.channel_dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        if not isinstance(d, dict) or d.get("kind", "standardize") != "standardize":
            raise DataError(f"unknown preprocessing record {d!r}: this deepslim reads kind 'standardize'")
        unknown = set(d) - {"kind", "mean", "std", "channel_dim"}
        if unknown:
            raise DataError(f"preprocessing record has unknown keys: {', '.join(sorted(unknown))}")
        try:
            return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       channel_dim=int(d.get("channel_dim", 1)))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed preprocessing record {d!r}: {exc}") from exc


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
