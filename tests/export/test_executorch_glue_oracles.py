"""How the ExecuTorch helpers drive the runtime, against a scripted ``executorch`` package (the real one is an
optional extra, absent here): the program is loaded from the path as a string, its "forward" method executed with
the input in a list, the first output returned; timing calls it after the warm-up; without ExecuTorch, one error
that says what to install."""

import sys
import types

import pytest
import torch

from deepslim.errors import ExportError
from deepslim.export import executorch as et


@pytest.fixture
def fake_runtime(monkeypatch):
    calls = []

    class Method:
        def execute(self, inputs):
            calls.append(("execute", inputs))
            return [inputs[0] * 2, "second output"]

    class Program:
        def load_method(self, name):
            calls.append(("method", name))
            return Method()

    class Runtime:
        @staticmethod
        def get():
            return Runtime()

        def load_program(self, path):
            calls.append(("program", path))
            return Program()

    package = types.ModuleType("executorch")
    runtime, exir = types.ModuleType("executorch.runtime"), types.ModuleType("executorch.exir")
    runtime.Runtime = Runtime
    package.runtime, package.exir = runtime, exir
    for name, module in (("executorch", package), ("executorch.runtime", runtime), ("executorch.exir", exir)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_run_pte_executes_forward_of_the_program_at_the_path_and_returns_the_first_output(fake_runtime, tmp_path):
    x = torch.tensor([1.0, 2.0])
    out = et.run_pte(tmp_path / "m.pte", x)
    assert torch.equal(out, torch.tensor([2.0, 4.0]))
    assert fake_runtime[:2] == [("program", str(tmp_path / "m.pte")), ("method", "forward")]
    assert fake_runtime[2][0] == "execute" and fake_runtime[2][1][0] is x and len(fake_runtime[2][1]) == 1


def test_time_pte_loads_once_warms_up_then_times_each_call_in_milliseconds(fake_runtime, tmp_path):
    times = et.time_pte(str(tmp_path / "m.pte"), torch.ones(1), min_seconds=0.0)
    assert len(times) == 20 and all(0 <= t < 1000 for t in times)  # min_runs, each in ms
    assert [c[0] for c in fake_runtime] == ["program", "method"] + ["execute"] * 25  # 5 warm-up calls


def test_without_executorch_running_a_program_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    assert not et.available()
    with pytest.raises(ExportError, match=r"^ExecuTorch is not installed: pip install 'deepslim\[executorch\]'"):
        et.run_pte(tmp_path / "m.pte", torch.ones(1))
