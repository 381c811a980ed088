"""The QDQ exporter drops a Relu or Clip between two identical quantizers only when every value the quantizer
represents passes it unchanged: checked at both ends of the u8 range, with a zero point inside (negative values)
and at 0, and with a Clip that has only one of its bounds."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest

qdq = importlib.import_module("deepslim.export.qdq")

CONSTANTS = {"zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32), "neg": np.array(-3.0, np.float32)}
GRAPH = SimpleNamespace(constant=CONSTANTS.get)


def _clip(*bounds):
    return SimpleNamespace(op_type="Clip", input=["x", *bounds])


@pytest.mark.parametrize(("node", "point", "inside"), [
    (_clip("zero", "six"), (6 / 255, 0), True),  # [0, 6]: exactly the clip's range
    (_clip("zero", "six"), (6.4 / 255, 128), False),  # [-3.2, 3.2]: the negative half is clipped to 0
    (_clip("zero", "six"), (7 / 255, 0), False),  # [0, 7]: the top is clipped to 6
    (_clip("neg", "six"), (6 / 255, 0), True),  # a lower bound below the quantizer's range clips nothing
    (_clip("zero", ""), (100 / 255, 0), True),  # no upper bound
    (_clip("zero"), (100 / 255, 0), True),  # the max input left out altogether
    (_clip("zero"), (1 / 255, 3), False),  # ...but the lower one still clips
    (_clip("", "six"), (6.4 / 255, 128), True),  # no lower bound: [-3.2, 3.2] passes Clip(max=6) unchanged
    (SimpleNamespace(op_type="Relu", input=["x"]), (0.1, 0), True),
    (SimpleNamespace(op_type="Relu", input=["x"]), (0.1, 3), False),
], ids=["exact", "negative-half", "top-clipped", "low-bound-below", "no-max", "max-left-out", "max-left-out-neg",
        "no-min", "relu-zero", "relu-negative"])  # fmt: skip
def test_a_clip_is_dropped_only_when_it_changes_no_representable_value(node, point, inside):
    assert qdq._inside(GRAPH, node, point) is inside
