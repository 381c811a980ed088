"""Datasets read from local files. Nothing is downloaded: a loader pointed at a missing directory lists the files
it expects, so the user can fetch them."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from deepslim.data._bundle import DataBundle, make_bundle, stratified_split
from deepslim.data._registry import register_dataset
from deepslim.errors import DataError

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    body = raw[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: {len(body)} bytes of data for shape {dims}")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def _find(root: Path, stem: str, expected: list[str]) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root} lacks {stem}[.gz]; expected files: {', '.join(expected)}")


def read_idx_set(name: str, root: str | Path) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) from the four IDX files in ``root``; images as
    float32 (N, 1, H, W) in [0, 1], labels as int64."""
    base = Path(root)
    expected = [f"{f}[.gz]" for f in _IDX_FILES]
    if not base.is_dir():
        raise DataError(f"{name} directory {str(root)!r} does not exist; it should hold: {', '.join(expected)}")
    x_tr, y_tr, x_te, y_te = (read_idx(_find(base, f, expected)) for f in _IDX_FILES)
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"{root}: image and label counts differ ({len(x_tr)} vs {len(y_tr)}, "
                        f"{len(x_te)} vs {len(y_te)})")  # fmt: skip
    x_tr = (x_tr.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28)
    x_te = (x_te.astype(np.float32) / 255.0)[:, None]
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


@register_dataset("mnist")
def load_mnist(*, root: str, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
               calib_size: int = 256) -> DataBundle:  # fmt: skip
    """MNIST from the four IDX files (optionally gzipped) in ``root``."""
    x_tr, y_tr, x_te, y_te = read_idx_set("mnist", root)
    tr, va, _ = stratified_split(y_tr, (val_fraction, 0.0), seed)
    return make_bundle("mnist", x_tr[tr], y_tr[tr], x_tr[va], y_tr[va], x_te, y_te, batch_size=batch_size,
                       calib_size=calib_size, seed=seed, num_classes=10, info={"root": str(root)})  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain: containers, strings, numbers and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # fmt: skip

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no data/labels)")
    data = np.asarray(obj[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), np.asarray(obj[b"labels"], dtype=np.int64)


@register_dataset("cifar10")
def load_cifar10(*, root: str, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                 calib_size: int = 256) -> DataBundle:  # fmt: skip
    """CIFAR-10 from the python batches (``data_batch_1``…``5``, ``test_batch``) in ``root``."""
    base = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DataError(f"{root} lacks CIFAR-10 python batches {', '.join(missing)}; expected: {', '.join(names)} "
                        "(from cifar-10-python.tar.gz)")  # fmt: skip
    parts = [_read_cifar_batch(base / n) for n in names]
    x_tr = np.concatenate([p[0] for p in parts[:5]]).astype(np.float32) / 255.0
    y_tr = np.concatenate([p[1] for p in parts[:5]])
    x_te, y_te = parts[5][0].astype(np.float32) / 255.0, parts[5][1]
    tr, va, _ = stratified_split(y_tr, (val_fraction, 0.0), seed)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return make_bundle("cifar10", x_tr[tr], y_tr[tr], x_tr[va], y_tr[va], x_te, y_te, batch_size=batch_size,
                       calib_size=calib_size, seed=seed, class_names=classes, num_classes=10)  # fmt: skip


_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@register_dataset("folder")
def load_folder(*, root: str, image_size: int = 32, grayscale: bool = False, batch_size: int = 64,
                val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                calib_size: int = 256) -> DataBundle:  # fmt: skip
    """An image folder: one sub-folder per class, images resized to ``image_size``², split stratified."""
    from PIL import Image, UnidentifiedImageError

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image folder {root!r} does not exist; it should hold one sub-folder of images per class")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class sub-folders, found {len(classes)}")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((base / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            try:
                with Image.open(f) as im:
                    img = im.convert("L" if grayscale else "RGB").resize((image_size, image_size),
                                                                         Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{f} is not a readable image: {exc}") from exc
            images.append(arr[None] if grayscale else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(sorted(_IMAGE_EXT))}) in the class sub-folders")
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    tr, va, te = stratified_split(y, (val_fraction, test_fraction), seed)
    return make_bundle("folder", x[tr], y[tr], x[va], y[va], x[te], y[te], batch_size=batch_size,
                       calib_size=calib_size, seed=seed, class_names=tuple(classes),
                       num_classes=len(classes), info={"root": str(base)})  # fmt: skip


@register_dataset("npz")
def load_npz(*, root: str, batch_size: int = 64, val_fraction: float = 0.1, seed: int = 0, normalize: bool = True,
             calib_size: int = 256) -> DataBundle:  # fmt: skip
    """Arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally ``x_val``, ``y_val``) in an .npz."""
    path = Path(root)
    if not path.is_file():
        raise DataError(f"npz file {root!r} does not exist; it should hold x_train, y_train, x_test, y_test")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise DataError(f"{root} is not a readable .npz file: {exc}") from exc
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"{root} lacks arrays {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    x_tr, y_tr = arrays["x_train"], arrays["y_train"].astype(np.int64)
    if len(x_tr) != len(y_tr) or len(arrays["x_test"]) != len(arrays["y_test"]):
        raise DataError(f"{root}: x and y lengths differ")
    if "x_val" in arrays and "y_val" in arrays:
        x_va, y_va = arrays["x_val"], arrays["y_val"].astype(np.int64)
    else:
        tr, va, _ = stratified_split(y_tr, (val_fraction, 0.0), seed)
        x_tr, y_tr, x_va, y_va = x_tr[tr], y_tr[tr], x_tr[va], y_tr[va]
    return make_bundle("npz", x_tr, y_tr, x_va, y_va, arrays["x_test"], arrays["y_test"].astype(np.int64),
                       batch_size=batch_size, calib_size=calib_size, seed=seed, normalize=normalize,
                       info={"root": str(path)})  # fmt: skip
