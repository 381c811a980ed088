"""Datasets that need no files: the scikit-learn digits, and procedurally generated shapes."""

from __future__ import annotations

import numpy as np

from deepslim.data._bundle import DataBundle, make_bundle, stratified_split
from deepslim.data._registry import register_dataset
from deepslim.errors import DataError

SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "bar", "x")


@register_dataset("digits")
def load_digits(*, batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                image_size: int = 8, calib_size: int = 256) -> DataBundle:  # fmt: skip
    """The 1,797 handwritten 8×8 digits bundled with scikit-learn (UCI optdigits test set), 10 classes.

    Split deterministically and stratified by class; ``image_size`` > 8 upsamples bilinearly (e.g. 28 for models
    built for MNIST).
    """
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = (raw.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = _resize(x, image_size)
    y = raw.target.astype(np.int64)
    tr, va, te = stratified_split(y, (val_fraction, test_fraction), seed)
    return make_bundle("digits", x[tr], y[tr], x[va], y[va], x[te], y[te], batch_size=batch_size,
                       calib_size=calib_size, seed=seed, class_names=tuple(map(str, range(10))),
                       info={"source": "sklearn.datasets.load_digits", "image_size": image_size})  # fmt: skip


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if size < 1:
        raise DataError(f"image_size must be positive, got {size}")
    return F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()


@register_dataset("shapes")
def load_shapes(*, n_train: int = 5000, n_val: int = 1000, n_test: int = 1000, image_size: int = 32,
                batch_size: int = 128, seed: int = 0, calib_size: int = 256) -> DataBundle:  # fmt: skip
    """Procedurally generated RGB images of ten geometric shapes: a CIFAR-like task that trains on a CPU.

    Each image has a random background colour with a gradient and noise, and one shape of random colour, size,
    position and a rotation within ±15° (so a square stays distinct from a diamond and + from x), anti-aliased by
    4× supersampling. The same seed gives the same images.
    """
    if min(n_train, n_test) < 1 or n_val < 0 or image_size < 8:
        raise DataError("shapes needs n_train, n_test >= 1, n_val >= 0 and image_size >= 8")
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(y)
    x = np.stack([_draw(int(c), image_size, rng) for c in y])
    a, b = n_train, n_train + n_val
    return make_bundle("shapes", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], batch_size=batch_size,
                       calib_size=calib_size, seed=seed, class_names=SHAPE_CLASSES,
                       num_classes=len(SHAPE_CLASSES), info={"image_size": image_size})  # fmt: skip


def _inside(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of the shape ``cls`` in rotated unit coordinates (radius about 1)."""
    r = np.hypot(u, v)
    ang = np.arctan2(v, u)
    if cls == 0:
        return r <= 1.0
    if cls == 1:
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if cls == 2:
        return (v >= -0.5) & (np.abs(u) <= (1.0 - v) / np.sqrt(3))  # apex at v = 1, base at v = -0.5
    if cls == 3:
        return np.abs(u) + np.abs(v) <= 1.0
    if cls == 4:
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if cls == 5:
        return (r <= 1.0) & (r >= 0.55)
    if cls == 6:  # five-pointed star: outer radius 1, inner 0.45
        from matplotlib.path import Path

        k = np.arange(10)
        rad = np.where(k % 2 == 0, 1.0, 0.45)
        star = Path(np.stack([rad * np.sin(k * np.pi / 5), rad * np.cos(k * np.pi / 5)], axis=1))
        return star.contains_points(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(u.shape)
    if cls == 7:
        return r * np.cos(np.mod(ang, np.pi / 3) - np.pi / 6) <= 0.85
    if cls == 8:
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
    d = np.sqrt(0.5)
    return (np.abs(d * (u - v)) <= 0.22) & (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9) | (
        (np.abs(d * (u + v)) <= 0.22) & (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    )


def _draw(cls: int, size: int, rng: np.random.Generator, ss: int = 4) -> np.ndarray:
    grid = (np.arange(size * ss) + 0.5) / ss  # supersampled pixel centres
    py, px = np.meshgrid(grid, grid, indexing="ij")
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    theta = rng.uniform(-np.pi / 12, np.pi / 12)  # ±15°: orientation tells square from diamond, + from x
    dx, dy = (px - cx) / radius, (py - cy) / radius
    u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
    mask = _inside(cls, u, v).reshape(size, ss, size, ss).mean(axis=(1, 3))  # (H, W) coverage in [0, 1]
    bg = rng.uniform(0, 1, 3)
    fg = rng.uniform(0, 1, 3)
    while np.abs(fg - bg).sum() < 0.6:  # keep the shape visible
        fg = rng.uniform(0, 1, 3)
    ramp = np.linspace(-0.15, 0.15, size)[None, :] * rng.choice([-1, 1])
    img = bg[:, None, None] + ramp[None] + (fg - bg)[:, None, None] * mask[None]
    img += rng.normal(0, 0.05, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)  # (3, H, W)
