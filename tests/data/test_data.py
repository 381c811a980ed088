import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import deepslim as ds


def test_digits_split_is_deterministic_stratified_and_complete():
    a, b = ds.load_data("digits"), ds.load_data("digits")
    sizes = [len(getattr(a, k).dataset) for k in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes == [1259, 179, 359]
    xa, ya = a.test.dataset.tensors
    xb, yb = b.test.dataset.tensors
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    counts = torch.bincount(ya, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of each class (174-183 images per class)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and len(a.calib.dataset) == 256
    xt = a.train.dataset.tensors[0]
    assert abs(float(xt.mean())) < 1e-4 and abs(float(xt.std()) - 1) < 0.01  # standardized on the training set
    assert ds.load_data("digits", seed=1).test.dataset.tensors[1].tolist() != ya.tolist()


def test_digits_upsampling():
    assert ds.load_data("digits", image_size=28).input_shape == (1, 28, 28)


def test_shapes_are_deterministic_balanced_and_learnable_shape():
    a = ds.load_data("shapes", n_train=200, n_val=20, n_test=50, seed=3)
    b = ds.load_data("shapes", n_train=200, n_val=20, n_test=50, seed=3)
    assert torch.equal(a.train.dataset.tensors[0], b.train.dataset.tensors[0])
    assert a.input_shape == (3, 32, 32) and a.num_classes == 10 and a.class_names[0] == "circle"
    labels = a.train.dataset.tensors[1]
    assert torch.bincount(labels, minlength=10).min() >= 15
    c = ds.load_data("shapes", n_train=200, n_val=20, n_test=50, seed=4)
    assert not torch.equal(a.train.dataset.tensors[0], c.train.dataset.tensors[0])


def _idx(path, array, gz=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _mnist_dir(root, gz):
    rng = np.random.default_rng(0)
    root.mkdir()
    _idx(root / ("train-images-idx3-ubyte" + (".gz" if gz else "")), rng.integers(0, 255, (60, 28, 28), np.uint8), gz)
    _idx(root / ("train-labels-idx1-ubyte" + (".gz" if gz else "")), np.arange(60, dtype=np.uint8) % 10, gz)
    _idx(root / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")), rng.integers(0, 255, (20, 28, 28), np.uint8), gz)
    _idx(root / ("t10k-labels-idx1-ubyte" + (".gz" if gz else "")), np.arange(20, dtype=np.uint8) % 10, gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader(tmp_path, gz):
    root = _mnist_dir(tmp_path / "m", gz)
    data = ds.load_data(f"mnist:{root}", val_fraction=0.1)
    assert data.input_shape == (1, 28, 28)
    sizes = [len(getattr(data, k).dataset) for k in ("train", "val", "test")]
    assert sizes == [50, 10, 20]  # validation takes round(6 x 0.1) = 1 image of each class
    assert data.test.dataset.tensors[1].tolist() == [i % 10 for i in range(20)]
    assert ds.load_data(f"fashion_mnist:{root}").name == "fashion-mnist"  # the old name is an alias


def test_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(ds.DataError, match="expected files: train-images-idx3-ubyte"):
        ds.load_data(f"mnist:{tmp_path}")
    with pytest.raises(ds.DataError, match="does not exist; it should hold"):
        ds.load_data(f"mnist:{tmp_path / 'nope'}")
    root = _mnist_dir(tmp_path / "m", False)
    f = root / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(ds.DataError, match="truncated"):
        ds.load_data(f"mnist:{root}")
    f.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ds.DataError, match="bad magic"):
        ds.load_data(f"mnist:{root}")


def _cifar_dir(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (20, 3072), np.uint8), b"labels": [i % 10 for i in range(20)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_cifar10_loader_and_refuses_foreign_pickles(tmp_path):
    root = _cifar_dir(tmp_path / "c")
    data = ds.load_data(f"cifar10:{root}")
    assert data.input_shape == (3, 32, 32) and len(data.test.dataset) == 20 and len(data.train.dataset) == 90
    assert data.class_names[0] == "airplane"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ds.DataError, match="refusing to unpickle .*print"):
        ds.load_data(f"cifar10:{root}")
    (root / "data_batch_3").unlink()
    with pytest.raises(ds.DataError, match="lacks CIFAR-10 python batches data_batch_3"):
        ds.load_data(f"cifar10:{root}")


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (20 + i, 16), colour).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "red" / "notes.txt").write_text("ignored")
    data = ds.load_data(f"folder:{tmp_path}", image_size=12)
    assert data.input_shape == (3, 12, 12) and data.class_names == ("blue", "red") and data.num_classes == 2
    assert sum(len(getattr(data, k).dataset) for k in ("train", "val", "test")) == 20
    (tmp_path / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ds.DataError, match="broken.png is not a readable image"):
        ds.load_data(f"folder:{tmp_path}")


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.npz"
    np.savez(path, x_train=rng.normal(size=(40, 5)), y_train=np.arange(40) % 4, x_test=rng.normal(size=(8, 5)),
             y_test=np.arange(8) % 4)  # fmt: skip
    data = ds.load_data(f"npz:{path}")
    assert data.input_shape == (5,) and data.num_classes == 4 and len(data.test.dataset) == 8
    assert ds.load_data(str(path)).num_classes == 4  # a bare .npz path works too
    np.savez(tmp_path / "b.npz", x_train=np.zeros((3, 2)))
    with pytest.raises(ds.DataError, match="lacks arrays y_train, x_test, y_test"):
        ds.load_data(f"npz:{tmp_path / 'b.npz'}")


def test_bad_specs():
    with pytest.raises(ds.UnknownNameError, match="known datasets: .*digits"):
        ds.load_data("imagenet")
    with pytest.raises(ds.ConfigError, match="give a path as 'mnist:PATH'"):
        ds.load_data("mnist")
    with pytest.raises(ds.ConfigError, match="takes no path"):
        ds.load_data("digits:/tmp")
    with pytest.raises(ds.ConfigError, match="no option 'batchsize'.*batch_size"):
        ds.load_data("digits", batchsize=3)
    with pytest.raises(ds.DataError, match="batch_size"):
        ds.load_data("digits", batch_size=0)
