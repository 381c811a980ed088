"""How a loader turns raw inputs into what a model expects (a base-layer module: model files record it, data loaders
produce it, training converts between records; ``deepslim.data.Preprocessing`` is its public name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deepslim.errors import DataError


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
