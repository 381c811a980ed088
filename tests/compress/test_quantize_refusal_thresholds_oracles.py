"""A refused quantization names the thresholds it was judged by, the top-1 agreement asked for included."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from deepslim.compress.quantize import LinearQuantConfig, QuantizationError, quantize_


def test_the_refusal_names_the_cosine_and_the_agreement_thresholds_asked_for():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(embed=nn.Linear(16, 32), act=nn.ReLU(), mix=nn.Linear(32, 32),
                                      act2=nn.ReLU(), head=nn.Linear(32, 10))).eval()  # fmt: skip
    with torch.no_grad():  # one channel ~1000x the others: a per-tensor u8 input quantizer of mix rounds the rest to 0
        model.embed.bias[0] = 2000.0
        model.mix.weight[:, 0] = 0.0
    with pytest.raises(QuantizationError) as err:
        quantize_(model, LinearQuantConfig(min_cosine=0.99, min_agreement=0.7), calib_data=[torch.randn(32, 16)])
    assert "; thresholds: cosine 0.99, top-1 agreement 70%); the model is left in float" in str(err.value)
