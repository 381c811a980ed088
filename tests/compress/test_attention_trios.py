"""One rule finds a model's (query, key, value) trios — three ``nn.Linear`` attributes of one module, which ONNX
Runtime fuses into one Attention — and dynamic int8's refusal (split_trio) and the search's ties (qkv_trios) are
derived from it."""

from torch import nn

from deepslim.compress.quantize import attention_trios
from deepslim.compress.quantize._dynamic import split_trio
from deepslim.search._choices import qkv_trios


def _model():
    whole = nn.ModuleDict({p: nn.Linear(2, 2) for p in ("query", "key", "value")})
    partial = nn.ModuleDict({"query": nn.Linear(2, 2), "key": nn.Linear(2, 2), "value": nn.Conv1d(2, 2, 1)})
    other = nn.ModuleDict({p: nn.Linear(2, 2) for p in ("query", "key", "value")})
    return nn.ModuleDict({"a": nn.ModuleDict({"self": whole}), "b": partial, "c": other})


def test_attention_trios_are_the_modules_with_linear_query_key_and_value_in_that_order():
    assert attention_trios(_model()) == (("a.self.query", "a.self.key", "a.self.value"),
                                         ("c.query", "c.key", "c.value"))  # fmt: skip


def test_the_search_ties_the_whole_trios_and_quantize_refuses_the_split_ones():
    model = _model()
    layers = ["a.self.query", "a.self.key", "a.self.value", "b.query", "b.key", "c.query", "c.value"]
    assert qkv_trios(model, layers) == (("a.self.query", "a.self.key", "a.self.value"),)
    assert split_trio(model, layers) == ("c.query", "c.key")
    assert split_trio(model, layers[:5]) is None  # b is no trio: its value is a convolution
