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


def test_a_fixed_width_stream_uses_just_enough_bits_one_for_two_symbols():
    import numpy as np

    from deepslim.compress.coding.archive import _stream_parts

    parts, info = _stream_parts(np.array([5, 6, 6, 5, 6, 5, 5, 6], dtype=np.int64), "s", False)
    assert info == {"coding": "fixed", "bits": 8, "count": 8} and parts["s"] == bytes([0b01101001])
    assert parts["s_table"] == bytes([10, 1])  # zigzag varint of the offset 5, then the width
    parts, info = _stream_parts(np.array([-3, 4], dtype=np.int64), "s", False)
    assert info["bits"] == 2 * 3 and parts["s"] == bytes([0b00011100])  # 0 and 7 in three bits each


def test_an_archive_decoded_into_a_model_whose_layer_has_no_bias_is_refused_by_key():
    """The decoder gives a folded layer back its bias only where the layer has a bias slot; a layer without one (here a
    ReLU where the archive has a Linear) is left to the key comparison, which names the tensors."""
    data = ds.encode(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ds.ArchiveError) as err:
        ds.decode(data, model=nn.Sequential(nn.ReLU()))
    assert str(err.value) == "archive does not match the architecture: tensors 2 unexpected (e.g. 0.bias)"
