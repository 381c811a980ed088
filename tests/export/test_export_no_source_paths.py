"""An exported file does not carry the exporter's per-node Python stack traces: they held the source paths of torch
and deepslim, so one model gave files of different sizes depending on where deepslim was installed (session 10:
+772 B on MobileNetV2-0.5 for a 4-character-longer path), and the paths went out with the shipped file."""

from pathlib import Path

import onnx
import torch
from torch import nn

import deepslim as ds
from deepslim.export.onnx import STACK_TRACE_KEY


def test_an_exported_file_holds_no_stack_trace_and_no_source_path(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path / "m.onnx"
    ds.export_onnx(net, path, example_input=torch.randn(1, 1, 8, 8))
    proto = onnx.load(str(path))
    keys = {q.key for n in proto.graph.node for q in n.metadata_props}
    assert STACK_TRACE_KEY not in keys and "namespace" in keys  # the module names the parity diagnosis reads stay
    raw = path.read_bytes()
    assert str(Path(ds.__file__).resolve().parent).encode() not in raw and b"site-packages" not in raw
    assert {p.key for p in proto.metadata_props} >= {"deepslim.version"}
