"""benchmarks/quantization_shapes.py measures ONNX Runtime accuracy at the run's --threads (not every core)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import quantization_shapes as qs  # noqa: E402


def _identity_classifier(path: Path) -> Path:
    """An ONNX graph whose logits are its (1, 3) input."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_accuracy_sessions_run_at_the_benchmarks_threads(tmp_path, monkeypatch, threads):
    from deepslim.export import onnx as export_onnx

    made = []
    real = export_onnx.ort_session

    def spy(path, **kwargs):
        made.append(real(path, **kwargs))
        return made[-1]

    monkeypatch.setattr(export_onnx, "ort_session", spy)
    x = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0], [1.0, 4.0, 0.0]])
    loader = [(x[:2], torch.tensor([1, 2])), (x[2:], torch.tensor([2, 1]))]  # right, wrong, right, right
    assert qs.ort_accuracy(_identity_classifier(tmp_path / "id.onnx"), loader, threads) == 0.75
    assert [s.get_session_options().intra_op_num_threads for s in made] == [threads]
