"""New quantization points take the next free name: a model quantized before whose point names are not 0..n-1 (one
was removed) gets a fresh name, never one that replaces a calibrated point."""

import torch
import torch.fx as fx
from torch import nn

from deepslim.compress.quantize._points import POINTS_ATTR, ActPoint, Calibration, _Placer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(2, 2), nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


def test_a_new_point_skips_the_names_already_taken():
    model = Net()
    taken = ActPoint()
    points = nn.ModuleDict({"p1": taken, "p2": ActPoint()})  # p0 was removed: len() names p2, which is taken
    setattr(model, POINTS_ATTR, points)
    graph = fx.Tracer().trace(model)
    setattr(fx.GraphModule(model, graph), POINTS_ATTR, points)  # the graph's owner checks new nodes' targets
    after = next(n for n in graph.nodes if n.op == "call_module" and n.target == "fc")
    placer = _Placer(model, graph, points, Calibration.MINMAX)
    node = placer._new_point(after, replace_uses=True)
    assert list(points) == ["p1", "p2", "p3"] and points["p1"] is taken
    assert node.target == f"{POINTS_ATTR}.p3" and [u.target for u in after.users] == [f"{POINTS_ATTR}.p3"]
    gm = fx.GraphModule(model, graph)
    x = torch.randn(3, 2)
    assert torch.equal(gm(x), model(x))  # an uncalibrated point passes values through
