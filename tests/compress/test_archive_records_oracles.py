"""A .dsz archive written through save_model records the example input's shape and dtype (the given one wins over
the model's own record) and reads back, through load_model, as the same architecture with the same weights."""

import torch

import deepslim as ds
from deepslim.models._records import INPUT_ATTR


def test_a_dsz_file_records_the_given_input_and_loads_back_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = ds.create_model("lenet5")
    setattr(model, INPUT_ATTR, {"shape": [1, 1, 28, 28], "dtype": "float32"})  # the model's own: overridden
    path = ds.save_model(model, tmp_path / "m.dsz", example_input=torch.randn(3, 1, 28, 28, dtype=torch.float64))
    back = ds.load_model(path)
    assert getattr(back, INPUT_ATTR) == {"shape": [3, 1, 28, 28], "dtype": "float64"}
    assert type(back) is type(model)
    for (name, p), q in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_without_an_example_input_the_models_own_record_is_kept(tmp_path):
    model = ds.create_model("lenet5")
    setattr(model, INPUT_ATTR, {"shape": [2, 1, 28, 28], "dtype": "float32"})
    back = ds.load_model(ds.save_model(model, tmp_path / "m.dsz"))
    assert getattr(back, INPUT_ATTR) == {"shape": [2, 1, 28, 28], "dtype": "float32"}
