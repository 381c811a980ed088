"""The archive refuses, by name, a tensor whose dtype it does not store (rather than writing a file it cannot read)."""

import pytest
import torch
from torch import nn

import deepslim as ds


def test_a_tensor_of_a_dtype_the_archive_does_not_store_is_refused_naming_it_and_the_dtype():
    model = nn.Sequential(nn.Linear(3, 2))
    model.register_buffer("phase", torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ds.ConfigError) as err:
        ds.encode(model)
    assert str(err.value) == "tensor phase has dtype torch.complex64, which the archive does not store"
