"""Where static int8 quantization puts its activation points in a traced model, read from the forward it writes:
one point per input of an addition or concatenation fed by a quantized layer (shared by every user of that value),
one after the join's result (after the ReLU that is its only user), one at the end of a quantized layer's chain of
transparent operators that reaches no other quantizer — and none where the value is the model's output, a
constant, reaches the next quantized layer through transparent operators, or feeds a layer kept in float."""

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepslim.compress.quantize import LinearQuantConfig, quantize_


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.h = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.h(F.relu(y + self.b(y)))


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.h = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 3)

    def forward(self, x):
        return self.h(torch.cat([self.a(x), self.b(x)], 1))


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.h = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.h(torch.tanh(self.a(x)))  # tanh is not transparent: the point goes before it


class ReluChain(Chain):
    def forward(self, x):
        return self.h(torch.relu(self.a(x)))


class OutRelu(Chain):
    def forward(self, x):
        return torch.relu(self.h(self.a(x)))


class AddOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        return self.a(x) + self.b(x)


class AddConst(Chain):
    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.ones(8))

    def forward(self, x):
        return self.h(self.a(x) + self.c)


class TorchAdd(Res):
    def forward(self, x):
        return self.h(torch.add(self.a(x), self.b(x)).relu())


class MethodAdd(Res):
    def __init__(self):
        super().__init__()
        self.r = nn.ReLU6()

    def forward(self, x):
        return self.h(self.r(self.a(x).add(self.b(x))))


class TwoUsers(Res):
    def forward(self, x):
        y = self.a(x)
        return self.h((y + self.b(x)) + y)


class FloatAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(8, 3)

    def forward(self, x):
        return self.h(x + x * 2)


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.h = nn.Conv2d(3, 4, 3), nn.Linear(16, 3)

    def forward(self, x):
        return self.h(torch.flatten(F.max_pool2d(F.relu(self.a(x)), 2), 1))


CASES = {
    "residual": (Res, {}, [("p0", "relu"), ("p1", "b"), ("p2", "relu_1")]),
    "concatenation": (Cat, {}, [("p0", "a"), ("p1", "b"), ("p2", "cat")]),
    "chain to an opaque function": (Chain, {}, [("p0", "a")]),
    "output through a relu": (OutRelu, {}, []),
    "join at the output": (AddOut, {}, [("p0", "a"), ("p1", "b")]),
    "addition of a buffer": (AddConst, {}, [("p0", "a")]),
    "torch.add then relu method": (TorchAdd, {}, [("p0", "a"), ("p1", "b"), ("p2", "relu")]),
    "add method then ReLU6 module": (MethodAdd, {}, [("p0", "a"), ("p1", "b"), ("p2", "r")]),
    "a value read by two joins": (TwoUsers, {}, [("p0", "a"), ("p1", "b"), ("p2", "add"), ("p3", "add_1")]),
    "float-only addition": (FloatAdd, {}, []),
    "transparent chain to the next layer": (Flat, {}, []),
    "next layer kept in float": (ReluChain, {"overrides": {"h": None}}, []),  # its input stays float too
    "a relu between two quantized layers": (ReluChain, {}, []),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_points_go_exactly_where_an_integer_runtime_quantizes(case):
    cls, options, expected = CASES[case]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(16, 3, 6, 6) if cls is Flat else torch.randn(16, 8)
    quantize_(model, LinearQuantConfig(min_cosine=0.0, **options), calib_data=[x])
    placed = re.findall(r"self\.deepslim_points\.(p\d+)\((\w+)\)", inspect.getsource(type(model).forward))
    assert placed == expected


HOOKED = {
    "residual": ["b output"],  # relu(a) has no module of its own: that join stays float, b's output is quantized
    "concatenation": ["a output", "b output"],
    "chain to an opaque function": ["a output"],
    "output through a relu": [],
    "join at the output": ["a output", "b output"],
    "addition of a buffer": ["a output"],
    "torch.add then relu method": ["a output", "b output"],
    "add method then ReLU6 module": ["a output", "b output", "r output"],
    "a value read by two joins": ["a output", "b output"],
    "float-only addition": [],
    "transparent chain to the next layer": [],
    "next layer kept in float": [],
    "a relu between two quantized layers": [],
}


@pytest.mark.parametrize("case", list(HOOKED))
def test_models_fx_cannot_trace_get_their_points_as_hooks_on_module_outputs(case):
    from deepslim.compress.quantize._points import point_labels, points_of

    cls, options, _ = CASES[case]

    class Untraceable(cls):
        def forward(self, x):
            assert len(x) > 0  # torch.fx cannot take len() of a proxy: torch.export captures it
            return super().forward(x)

    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(16, 3, 6, 6) if cls is Flat else torch.randn(16, 8)
    quantize_(model, LinearQuantConfig(min_cosine=0.0, **options), calib_data=[x])
    assert type(model) is Untraceable  # no traced forward: hooks
    assert sorted(point_labels(model, list(points_of(model)))) == HOOKED[case]
