"""distill()'s helpers on their own: hint capture (which output of a layer is recorded, and a misspelt layer refused
by name), whether a loader carries targets, and how many examples it holds."""

import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from deepslim.errors import ConfigError
from deepslim.tasks import get_task

distill = importlib.import_module("deepslim.train.distill")  # the module (deepslim.train.distill is the function)


class _Stream(IterableDataset):
    def __iter__(self):
        yield from torch.randn(5, 3)


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_a_hint_layer_that_does_not_exist_is_refused_by_name():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    refused = r"^hint layer 'body' is not a layer of the student$"
    with pytest.raises(ConfigError, match=refused), distill._captured(model, ["0", "body"], "student"):
        pass
    assert _hooks(model) == 0  # refused before any hook was registered
    with distill._captured(model, ["0", "1"], "teacher"):  # every name present: no error, one hook each
        assert _hooks(model) == 2
    assert _hooks(model) == 0


def test_capture_records_a_tensor_output_and_the_first_item_of_a_tuple():
    lstm = nn.LSTM(3, 4, batch_first=True)  # returns (output, (h, c))
    model = nn.ModuleDict({"lstm": lstm, "fc": nn.Linear(4, 2)})
    x = torch.randn(2, 5, 3)
    with distill._captured(model, ["lstm", "fc"], "student") as captured:
        out, _ = lstm(x)
        y = model["fc"](out)
    assert isinstance(captured["lstm"], torch.Tensor) and torch.equal(captured["lstm"], out)  # not (h, c)
    assert torch.equal(captured["fc"], y)
    lstm(x)  # hooks removed: nothing recorded any more
    assert torch.equal(captured["lstm"], out)


def test_has_targets_looks_at_the_first_batch_and_an_empty_loader_has_none():
    task = get_task("classification")
    labelled = DataLoader(TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), batch_size=2)
    unlabelled = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=2)
    empty = DataLoader(TensorDataset(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)), batch_size=2)
    assert distill._has_targets(task, labelled) is True
    assert distill._has_targets(task, unlabelled) is False
    assert distill._has_targets(task, empty) is False


def test_samples_is_the_dataset_length_or_zero_for_a_stream():
    assert distill._samples(DataLoader(TensorDataset(torch.randn(7, 3)), batch_size=2)) == 7
    assert distill._samples(DataLoader(_Stream(), batch_size=2)) == 0


def test_a_hint_map_is_pooled_to_the_teachers_non_square_size():
    s, t = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 3, 2)
    torch.testing.assert_close(distill._match(s, t), torch.nn.functional.adaptive_avg_pool2d(s, (3, 2)))
    same = torch.randn(2, 4, 3, 2)
    assert distill._match(same, t) is same  # already the teacher's size: untouched
    with pytest.raises(ConfigError, match=r"^hint shapes do not match after the regressor: student \(2, 5, 3, 2\)"):
        distill._match(torch.randn(2, 5, 3, 2), t)
