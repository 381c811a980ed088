"""A benchmark worker: one runtime session in its own process, driven by JSON lines on stdin.

Running each variant in its own process keeps sessions from disturbing each other (an idle session's spinning
threads doubled a neighbour's latency when two were alternated in one process) and gives each its own peak memory.
Commands: {"load": path, "input": npy, "threads": n, "spinning": bool, "runtime": name} -> {"ok": true,
"rss_before": bytes}; {"run": k} -> {"times_ms": [...]}; {"quit": true}. Imports only numpy and the runtime
("onnxruntime", or "openvino" / "openvino-bf16" for OpenVINO's CPU plugin).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process; unlike ru_maxrss, VmHWM starts afresh at
    exec, so the parent's memory is not counted."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _load_ort(cmd: dict[str, Any], x: Any) -> Callable[[], object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if cmd.get("threads"):
        opts.intra_op_num_threads = cmd["threads"]
    opts.inter_op_num_threads = 1
    if not cmd.get("spinning", True):
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(cmd["load"], opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def openvino_config(threads: int | None, spinning: bool, runtime: str) -> dict[str, Any]:
    """CPU plugin settings matching the ONNX Runtime path: one stream, latency hint, ``threads`` inference threads.

    fp32 models run in fp32 ("openvino"; the plugin's default on CPUs with bf16 units would be bf16) unless the
    runtime is "openvino-bf16". OpenVINO's threads (TBB) have no spin switch; when models are interleaved
    (``spinning`` off) threads are not pinned to cores, so two processes do not fight over the same pinned cores.
    """
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                           "INFERENCE_PRECISION_HINT": "bf16" if runtime == "openvino-bf16" else "f32"}  # fmt: skip
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    if not spinning:
        cfg["ENABLE_CPU_PINNING"] = "NO"
    return cfg


def _load_openvino(cmd: dict[str, Any], x: Any) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(cmd["load"]), "CPU",  # fmt: skip
                                  openvino_config(cmd.get("threads"), cmd.get("spinning", True), cmd["runtime"]))
    request = compiled.create_infer_request()
    return lambda: request.infer([x])


def main() -> None:
    import numpy as np

    call: Callable[[], object] | None = None
    reply: dict[str, Any]
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if "load" in cmd:
                before = _status_bytes("VmRSS")
                x = np.load(cmd["input"])
                runtime = cmd.get("runtime", "onnxruntime")
                call = _load_ort(cmd, x) if runtime == "onnxruntime" else _load_openvino(cmd, x)
                call()
                reply = {"ok": True, "rss_before": before}
            elif "run" in cmd:
                assert call is not None
                times = []
                for _ in range(cmd["run"]):
                    t0 = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - t0) * 1e3)
                reply = {"times_ms": times, "peak_rss": _status_bytes("VmHWM")}
            else:
                return
        except Exception as exc:  # reported to the parent, which raises a DeepSlimError
            first = (str(exc).strip().splitlines() or [""])[0]  # MemoryError() and alike have no message
            reply = {"error": f"{type(exc).__name__}: {first}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
