"""Which parameters a ``trainable`` regime selects, by exact name, on a nested model (layers named ``0.0``, ``0.1``,
``1``): a layer name or pattern selects that layer's parameters only, ``bias:K``/``weight:K`` count layers from the
end, and ``last`` is the last layer with parameters."""

import pytest
from torch import nn

from deepslim.analysis._training_trace import select_trainable
from deepslim.errors import ConfigError


def _nested() -> nn.Module:
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize(("spec", "names"), [
    ("sparse:0.0", {"0.0.weight", "0.0.bias"}),
    ("sparse:re:0\\..*", {"0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"}),
    ("sparse:0.1,2", {"0.1.weight", "0.1.bias", "2.weight", "2.bias"}),
    ("sparse:bias:2", {"0.1.bias", "2.bias"}),
    ("sparse:bias", {"0.0.bias", "0.1.bias", "2.bias"}),  # every bias
    ("sparse:bias:0", set()),
    ("sparse:weight:0", set()),
    ("sparse:weight:1", {"2.weight", "2.bias"}),
    ("last", {"2.weight", "2.bias"}),
    ("bias", {"0.0.bias", "0.1.bias", "2.bias"}),
])  # fmt: skip
def test_each_regime_selects_exactly_the_parameters_it_names(spec, names):
    assert select_trainable(_nested(), spec) == names


def test_a_sparse_item_naming_no_layer_is_refused():
    with pytest.raises(ConfigError, match=r"sparse item '0' names no layer with parameters"):
        select_trainable(_nested(), "sparse:0")


def test_a_sparse_selection_on_a_model_without_parameters_and_an_unknown_regime_are_refused_exactly():
    with pytest.raises(ConfigError, match=r"^the model has no parameters to train$"):
        select_trainable(nn.Sequential(nn.ReLU()), "sparse:bias")
    with pytest.raises(ConfigError, match=r"^unknown trainable 'head'; use all, bias, last, none, current, "
                                          r"sparse:SPEC, a set or a callable$"):  # fmt: skip
        select_trainable(_nested(), "head")
