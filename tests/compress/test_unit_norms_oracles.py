"""Head pruning scores a head by the norms of its slice of a projection: rows of the output side ("out": a query,
key or value projection's output features) or columns of the input side ("in": the output projection's input
features), grouped into ``units`` equal blocks -- computed here from the weight directly, for a non-square layer."""

import importlib

import torch
from torch import nn

heads = importlib.import_module("deepslim.compress.prune.heads")


def test_unit_norms_take_rows_for_the_out_side_and_columns_for_the_in_side():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)  # weight (4 out, 6 in)
    w = layer.weight.detach()
    out_norms = torch.stack([w[0:2].norm(), w[2:4].norm()])  # 2 units of 2 output rows
    in_norms = torch.stack([w[:, 0:2].norm(), w[:, 2:4].norm(), w[:, 4:6].norm()])  # 3 units of 2 input columns
    torch.testing.assert_close(heads._unit_norms(layer, "out", 2), out_norms)
    torch.testing.assert_close(heads._unit_norms(layer, "in", 3), in_norms)
