"""The benchmark worker (``deepslim.export._worker``) driven in this process: its JSON-lines protocol, the runtime
settings it gives ONNX Runtime and OpenVINO, and its memory readings.

The benchmark runs the worker as a child process, where a test never sees its code run; here ``main`` reads its
commands from a replaced stdin and the replies are checked against the model's own output and /proc.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from deepslim.export import _worker

W = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)


@pytest.fixture
def linear_file(tmp_path):
    """y = x @ W: a one-node ONNX graph, and an input for it saved as .npy."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], W.flatten().tolist())])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = tmp_path / "x.npy"
    np.save(x, np.array([[2.0, 1.0]], dtype=np.float32))
    return path, x


def _drive(monkeypatch, commands):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(c) + "\n" for c in commands)))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    _worker.main()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_load_run_quit_session_answers_one_line_per_command_and_stops_at_quit(monkeypatch, linear_file):
    path, x = linear_file
    replies = _drive(monkeypatch, [{"load": str(path), "input": str(x), "threads": 1}, {"run": 3}, {"quit": True},
                                   {"run": 2}])  # fmt: skip
    assert len(replies) == 2  # nothing after quit
    assert replies[0]["ok"] is True and set(replies[0]) == {"ok", "rss_before"}
    assert 10_000_000 < replies[0]["rss_before"] <= replies[1]["peak_rss"]
    assert set(replies[1]) == {"times_ms", "peak_rss"} and len(replies[1]["times_ms"]) == 3
    assert all(0 < t < 5_000 for t in replies[1]["times_ms"])


def test_a_failing_load_is_one_line_naming_the_exception_and_the_worker_goes_on(monkeypatch, linear_file, tmp_path):
    path, x = linear_file
    replies = _drive(monkeypatch, [{"load": str(tmp_path / "missing.onnx"), "input": str(x)},
                                   {"load": str(path), "input": str(x)}, {"run": 1}])  # fmt: skip
    error = replies[0]["error"]
    assert set(replies[0]) == {"error"} and error.startswith("NoSuchFile: ") and "\n" not in error
    assert replies[1]["ok"] is True and len(replies[2]["times_ms"]) == 1


def test_the_ort_session_gets_the_threads_one_inter_op_thread_no_spinning_and_the_cpu_provider(monkeypatch,
                                                                                             linear_file):
    path, x = linear_file
    seen = {}
    real = onnxruntime.InferenceSession

    def session(file, opts, providers):
        try:
            spin = opts.get_session_config_entry("session.intra_op.allow_spinning")
        except Exception:  # no entry: ORT's default (spinning)
            spin = None
        seen.update(file=file, intra=opts.intra_op_num_threads, inter=opts.inter_op_num_threads, providers=providers,
                    spin=spin)  # fmt: skip
        return real(file, opts, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    call = _worker._load_ort({"load": str(path), "threads": 3, "spinning": False}, np.load(x))
    assert seen == {"file": str(path), "intra": 3, "inter": 1, "providers": ["CPUExecutionProvider"], "spin": "0"}
    np.testing.assert_allclose(call()[0], np.load(x) @ W)  # the feed is the input under the model's input name
    _worker._load_ort({"load": str(path)}, np.load(x))  # no threads: ORT's default (0), spinning left on
    assert (seen["intra"], seen["inter"], seen["spin"]) == (0, 1, None)


@pytest.mark.parametrize(("threads", "spinning", "runtime", "expected"), [
    (None, True, "openvino", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}),
    (2, False, "openvino-bf16", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "bf16",
                                 "INFERENCE_NUM_THREADS": "2", "ENABLE_CPU_PINNING": "NO"}),
    (0, True, "openvino", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}),
])  # fmt: skip
def test_openvino_gets_one_latency_stream_fp32_unless_bf16_and_pinning_off_when_interleaved(threads, spinning,
                                                                                           runtime, expected):
    assert _worker.openvino_config(threads, spinning, runtime) == expected


def test_an_openvino_session_computes_the_models_output(monkeypatch, linear_file):
    pytest.importorskip("openvino")
    path, x = linear_file
    replies = _drive(monkeypatch, [{"load": str(path), "input": str(x), "threads": 1, "runtime": "openvino",
                                    "spinning": False}, {"run": 2}])  # fmt: skip
    assert replies[0]["ok"] is True and len(replies[1]["times_ms"]) == 2
    call = _worker._load_openvino({"load": str(path), "threads": 1, "runtime": "openvino"}, np.load(x))
    np.testing.assert_allclose(next(iter(call().values())), np.load(x) @ W)


def test_memory_readings_are_this_processes_status_fields_in_bytes():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    hwm = int(fields["VmHWM"].split()[0]) * 1024
    assert abs(_worker._status_bytes("VmHWM") - hwm) <= 16 * 1024 * 1024
    assert _worker._status_bytes("VmRSS") <= _worker._status_bytes("VmHWM")
    assert _worker._status_bytes("NoSuchField") == 0
    assert _worker._status_bytes("VmRS") == 0  # a prefix of a field is not the field
