"""benchmarks/search.py's held-out validation images and _search_final9's finals accuracy (review R15 L8): the
held-out set is the full validation split minus the search's Subset of it, never read from a Subset of anything
else; a finalist scored on held-out images reports its accuracy on the search's validation images from
``val_accuracy``."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from deepslim.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")

from _search_final9 import finals_val_accuracy  # noqa: E402
from search import held_out_val  # noqa: E402

BASE = TensorDataset(torch.arange(20.0).unsqueeze(1), torch.zeros(20, dtype=torch.long))


def _bundle(val):
    return SimpleNamespace(val=val)


def test_the_held_out_images_are_the_validation_split_minus_the_searchs_subset_of_it():
    full = _bundle(DataLoader(BASE, batch_size=4))
    data = _bundle(DataLoader(Subset(BASE, [1, 3, 5]), batch_size=4))
    held = held_out_val(full, data)
    assert held.dataset.indices == [i for i in range(20) if i not in (1, 3, 5)]


def test_a_search_on_the_whole_split_leaves_none_even_when_that_split_is_itself_a_subset():
    full = _bundle(DataLoader(Subset(BASE, list(range(10, 20))), batch_size=4))  # its indices name BASE's images
    assert held_out_val(full, full) is None  # read as positions, they left 0..9: all ten images, each judged on


def test_a_validation_subset_of_another_dataset_is_refused():
    full = _bundle(DataLoader(Subset(BASE, list(range(10, 20))), batch_size=4))
    data = _bundle(DataLoader(Subset(BASE, [11, 12]), batch_size=4))  # BASE's indices, not positions in full.val
    with pytest.raises(ConfigError, match="not a Subset of the full validation split's dataset"):
        held_out_val(full, data)


def test_the_finals_val_accuracy_of_a_finalist_scored_on_held_out_images_is_its_val_accuracy():
    plain = {"accuracy": 0.91, "measurement": {"extra": {"split": "val"}}}
    held = {"accuracy": 0.93, "measurement": {"extra": {"split": "select", "val_accuracy": 0.90}}}
    assert finals_val_accuracy(plain) == 0.91
    assert finals_val_accuracy(held) == 0.90
